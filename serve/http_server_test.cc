#include "serve/http_server.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/thread_slice.h"
#include "serve/test_http_client.h"

namespace recstream::serve {
namespace {

using testing::ClientResponse;
using testing::HttpCall;
using testing::TestConnection;

ServeOptions TestOptions() {
  ServeOptions o;
  o.listen = "127.0.0.1:0";
  o.threads = 2;
  return o;
}

// Echoes the request as "method|path|k=v;...|authorization|body".
HttpResponse Echo(const HttpRequest& req) {
  if (req.path == "/throw") throw std::runtime_error("boom");
  if (req.path == "/sleep") std::this_thread::sleep_for(std::chrono::milliseconds(200));
  HttpResponse r;
  r.content_type = "text/plain";
  r.body = req.method + "|" + req.path + "|";
  for (const auto& [k, v] : req.query) r.body += k + "=" + v + ";";
  r.body += "|" + req.authorization + "|" + req.body;
  if (req.path == "/teapot") r.status = 418;
  return r;
}

std::unique_ptr<HttpServer> StartEcho(const ServeOptions& o) {
  std::unique_ptr<HttpServer> server;
  Status s = HttpServer::Start(o, Echo, &server);
  REQUIRE(s.ok());
  REQUIRE(server->port() != 0);
  return server;
}

TEST_CASE("ParseTarget decodes query parameters", "[http]") {
  struct Case {
    std::string target, path;
    std::map<std::string, std::string> query;
  };
  std::vector<Case> cases = {
      {"/v1/score", "/v1/score", {}},
      {"/v1/score?", "/v1/score", {}},
      {"/a?user=u1&item=i%202", "/a", {{"user", "u1"}, {"item", "i 2"}}},
      {"/a?x=a+b&y=%22q%22&z", "/a", {{"x", "a b"}, {"y", "\"q\""}, {"z", ""}}},
      {"/a?k=1&k=2", "/a", {{"k", "1"}}},
      {"/a?bad=%zz%4&e=%C3%A9", "/a", {{"bad", "%zz%4"}, {"e", "\xC3\xA9"}}},
      {"/a?&&p=%26%3D", "/a", {{"p", "&="}}},
  };
  for (const auto& c : cases) {
    INFO(c.target);
    std::string path;
    std::map<std::string, std::string> query;
    ParseTarget(c.target, &path, &query);
    CHECK(path == c.path);
    CHECK(query == c.query);
  }
}

TEST_CASE("HttpServer serves requests on an ephemeral port", "[http]") {
  auto server = StartEcho(TestOptions());
  ClientResponse r = HttpCall(server->port(), "POST", "/p/q?user=a%20b&k=3", "hello",
                              "Authorization: Bearer xyz\r\n");
  CHECK(r.status == 200);
  CHECK(r.headers["content-type"] == "text/plain");
  CHECK(r.body == "POST|/p/q|k=3;user=a b;|Bearer xyz|hello");

  r = HttpCall(server->port(), "GET", "/teapot");
  CHECK(r.status == 418);
}

TEST_CASE("HttpServer keeps connections alive and answers pipelined requests in order", "[http]") {
  auto server = StartEcho(TestOptions());
  TestConnection c(server->port());
  REQUIRE(c.connected());
  for (int i = 0; i < 5; ++i) {
    ClientResponse r = c.Request("GET", "/k?i=" + std::to_string(i));
    REQUIRE(r.status == 200);
    CHECK(r.body == "GET|/k|i=" + std::to_string(i) + ";||");
  }
  // Three requests in one write; the first is slow, order must still hold.
  std::string batch = TestConnection::Format("GET", "/sleep?n=0") +
                      TestConnection::Format("POST", "/x?n=1", "body1") +
                      TestConnection::Format("GET", "/x?n=2");
  REQUIRE(c.SendRaw(batch));
  CHECK(c.Read().body == "GET|/sleep|n=0;||");
  CHECK(c.Read().body == "POST|/x|n=1;||body1");
  CHECK(c.Read().body == "GET|/x|n=2;||");
}

TEST_CASE("HttpServer closes after a Connection: close or HTTP/1.0 request", "[http]") {
  auto server = StartEcho(TestOptions());
  {
    TestConnection c(server->port());
    ClientResponse r = c.Request("GET", "/a", "", "Connection: close\r\n");
    CHECK(r.status == 200);
    CHECK(c.WaitClosed());
  }
  {
    TestConnection c(server->port());
    REQUIRE(c.SendRaw("GET /a HTTP/1.0\r\n\r\n"));
    CHECK(c.Read().status == 200);
    CHECK(c.WaitClosed());
  }
}

TEST_CASE("HttpServer handles many concurrent connections", "[http]") {
  auto server = StartEcho(TestOptions());
  constexpr int kClients = 64, kRequests = 20;
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) {
    clients.emplace_back([&, t] {
      TestConnection c(server->port());
      for (int i = 0; i < kRequests; ++i) {
        std::string id = std::to_string(t) + "-" + std::to_string(i);
        ClientResponse r = c.Request("GET", "/c?id=" + id);
        if (r.status == 200 && r.body == "GET|/c|id=" + id + ";||") ok.fetch_add(1);
      }
    });
  }
  for (auto& t : clients) t.join();
  CHECK(ok.load() == kClients * kRequests);
}

TEST_CASE("HttpServer enforces body and header limits", "[http]") {
  ServeOptions o = TestOptions();
  o.max_body_bytes = 1024;
  o.max_header_bytes = 2048;
  auto server = StartEcho(o);

  ClientResponse r = HttpCall(server->port(), "POST", "/b", std::string(1024, 'x'));
  CHECK(r.status == 200);

  // The whole oversize body is sent before reading: the 413 must survive.
  TestConnection c(server->port());
  r = c.Request("POST", "/b", std::string(64 << 10, 'x'));
  CHECK(r.status == 413);
  CHECK(r.body == R"({"error":"request body too large"})");
  CHECK(c.WaitClosed());

  r = HttpCall(server->port(), "GET", "/h", "", "X-Big: " + std::string(4096, 'h') + "\r\n");
  CHECK(r.status == 431);
  CHECK(r.headers["content-type"] == "application/json");

  r = HttpCall(server->port(), "GET", "/still-alive");
  CHECK(r.status == 200);
}

TEST_CASE("HttpServer answers Expect: 100-continue", "[http]") {
  auto server = StartEcho(TestOptions());
  TestConnection c(server->port());
  REQUIRE(c.SendRaw(
      "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
  // Read the interim 100 by hand: the body goes only after it.
  REQUIRE(c.SendRaw("data"));
  ClientResponse r = c.Read();  // skips the 100
  CHECK(r.status == 200);
  CHECK(r.body == "POST|/e|||data");
}

TEST_CASE("HttpServer turns handler exceptions into 500 JSON", "[http]") {
  auto server = StartEcho(TestOptions());
  TestConnection c(server->port());
  ClientResponse r = c.Request("GET", "/throw");
  CHECK(r.status == 500);
  CHECK(r.headers["content-type"] == "application/json");
  CHECK(r.body == R"({"error":"internal error"})");
  // The connection survives.
  CHECK(c.Request("GET", "/ok").status == 200);
}

TEST_CASE("HttpServer rejects malformed requests with 400", "[http]") {
  auto server = StartEcho(TestOptions());
  TestConnection c(server->port());
  REQUIRE(c.SendRaw("THIS IS NOT HTTP\r\n\r\n"));
  CHECK(c.Read().status == 400);
  CHECK(c.WaitClosed());
}

TEST_CASE("HttpServer: a slow or idle client does not block others and times out", "[http]") {
  ServeOptions o = TestOptions();
  o.threads = 1;
  o.request_timeout_ms = 400;
  auto server = StartEcho(o);

  TestConnection slow(server->port());
  REQUIRE(slow.SendRaw("GET /slow HTTP/1.1\r\nHost: x\r\n"));  // never finishes
  TestConnection idle(server->port());
  REQUIRE(idle.connected());

  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) CHECK(HttpCall(server->port(), "GET", "/fast").status == 200);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(300));

  // Both are closed once the timeout passes.
  CHECK(slow.WaitClosed());
  CHECK(idle.WaitClosed());
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::milliseconds(2000));
}

TEST_CASE("HttpServer keeps a connection idle for less than the timeout", "[http]") {
  ServeOptions o = TestOptions();
  o.threads = 1;
  o.request_timeout_ms = 400;
  auto server = StartEcho(o);
  TestConnection kept(server->port());
  CHECK(kept.Request("GET", "/a").status == 200);
  for (int i = 0; i < 3; ++i) {  // 900 ms in all, never 400 ms idle
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(kept.Request("GET", "/b").status == 200);
  }
  // A request begun and finished within the timeout, in pieces.
  REQUIRE(kept.SendRaw("GET /c HTTP/1.1\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  REQUIRE(kept.SendRaw("Host: x\r\n\r\n"));
  CHECK(kept.Read().status == 200);
}

TEST_CASE("HttpServer refuses connections beyond max_connections", "[http]") {
  ServeOptions o = TestOptions();
  o.max_connections = 2;
  auto server = StartEcho(o);
  TestConnection a(server->port()), b(server->port());
  CHECK(a.Request("GET", "/a").status == 200);
  CHECK(b.Request("GET", "/b").status == 200);
  {
    TestConnection extra(server->port());
    ClientResponse r = extra.Read();
    CHECK(r.status == 503);
    CHECK(r.body == R"({"error":"too many connections"})");
  }
  // A slot frees up when a connection closes.
  { TestConnection closing(server->port()); }
  a.Request("GET", "/a", "", "Connection: close\r\n");
  CHECK(a.WaitClosed());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(HttpCall(server->port(), "GET", "/c").status == 200);
}

TEST_CASE("HttpServer reports bad listen addresses", "[http]") {
  auto server = StartEcho(TestOptions());
  ServeOptions o = TestOptions();
  o.listen = "127.0.0.1:" + std::to_string(server->port());
  std::unique_ptr<HttpServer> second;
  Status s = HttpServer::Start(o, Echo, &second);
  CHECK(s.IsIOError());
  CHECK(s.message().find(o.listen) != std::string::npos);

  for (std::string bad : {"nonsense", "127.0.0.1:", "127.0.0.1:99999", "[::1"}) {
    o.listen = bad;
    INFO(bad);
    CHECK(HttpServer::Start(o, Echo, &second).IsInvalidArgument());
  }
}

TEST_CASE("HttpServer stops cleanly with open connections", "[http]") {
  auto server = StartEcho(TestOptions());
  TestConnection c(server->port());
  CHECK(c.Request("GET", "/a").status == 200);
  server->Stop();
  CHECK(c.WaitClosed());
  server->Stop();  // idempotent
  server.reset();
}

}  // namespace
namespace {

// Sends `request` on a new connection and returns every byte received until
// the server closes it or `wait_ms` pass without data.
std::string RawExchange(uint16_t port, const std::string& request, int wait_ms = 2000) {
  TestConnection c(port, wait_ms);
  REQUIRE(c.SendRaw(request));
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(c.fd(), buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return out;
}

TEST_CASE("HttpServer writes the response head Beast wrote, byte for byte", "[http]") {
  auto server = StartEcho(TestOptions());
  const std::string body = "GET|/a|||";
  const std::string head = "Server: recstream\r\nContent-Type: text/plain\r\n";
  const std::string length = "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  CHECK(RawExchange(server->port(), "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") ==
        "HTTP/1.1 200 OK\r\n" + head + "Connection: close\r\n" + length + body);
  CHECK(RawExchange(server->port(), "GET /a HTTP/1.0\r\n\r\n") ==
        "HTTP/1.0 200 OK\r\n" + head + length + body);
  CHECK(RawExchange(server->port(), "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 300) ==
        "HTTP/1.0 200 OK\r\n" + head + "Connection: keep-alive\r\n" + length + body);
  CHECK(RawExchange(server->port(), "GET /a HTTP/1.1\r\nHost: x\r\n\r\n", 300) ==
        "HTTP/1.1 200 OK\r\n" + head + length + body);
  CHECK(RawExchange(server->port(), "NOT HTTP\r\n\r\n") ==
        "HTTP/1.1 400 Bad Request\r\nServer: recstream\r\nContent-Type: application/json\r\n"
        "Connection: close\r\nContent-Length: 34\r\n\r\n{\"error\":\"malformed HTTP request\"}");
}

// The calling thread's scheduling policy and nice value, as
// "policy=P nice=N" (SCHED_OTHER is 0, SCHED_FIFO 1).
std::string ThreadScheduling() {
  int policy = sched_getscheduler(0) & ~SCHED_RESET_ON_FORK;
  int nice = getpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)));
  return "policy=" + std::to_string(policy) + " nice=" + std::to_string(nice);
}

// Answers the scheduling of the thread handling the request, and of a thread
// started from the handler (as a thread pool started lazily by a handler
// would be).
HttpResponse SchedulingEcho(const HttpRequest&) {
  std::string child;
  std::thread([&] { child = ThreadScheduling(); }).join();
  return HttpResponse{200, "text/plain", ThreadScheduling() + "|" + child};
}

TEST_CASE("HttpServer refuses a malformed io_priority", "[http]") {
  for (const char* bad : {"fifo", "fifo:0", "fifo:100", "nice:20", "nice:-21", "nice:x", "nice:5 ",
                          "rr:10", "high"}) {
    INFO(bad);
    ServeOptions o = TestOptions();
    o.io_priority = bad;
    std::unique_ptr<HttpServer> server;
    Status s = HttpServer::Start(o, Echo, &server);
    CHECK(s.IsInvalidArgument());
    CHECK(s.ToString().find("serve.io_priority") != std::string::npos);
    CHECK(server == nullptr);
  }
}

TEST_CASE("HttpServer runs its I/O threads at io_priority and still answers", "[http]") {
  const std::string plain = ThreadScheduling();  // this thread: policy=0, the inherited nice
  struct Case {
    std::string spec, io_threads;
    bool privileged;  // needs CAP_SYS_NICE
  };
  // A positive nice needs no privilege; the others are checked where the
  // process may use them and must otherwise fail with a clear message.
  for (const Case& c : std::vector<Case>{
           {"", plain, false},
           {"nice:7", "policy=0 nice=7", false},
           {"nice:-5", "policy=0 nice=-5", true},
           {"fifo:10", "policy=1 nice=" + plain.substr(plain.find("nice=") + 5), true}}) {
    INFO(c.spec);
    ServeOptions o = TestOptions();
    o.io_priority = c.spec;
    std::unique_ptr<HttpServer> server;
    Status s = HttpServer::Start(o, SchedulingEcho, &server);
    if (!s.ok()) {
      // Only a privileged setting may fail, and then for lack of privilege.
      CHECK(c.privileged);
      CHECK(s.ToString().find("serve.io_priority=" + c.spec) != std::string::npos);
      CHECK(s.ToString().find("CAP_SYS_NICE") != std::string::npos);
      WARN("not permitted here; the refusal was checked instead: " << s.ToString());
      continue;
    }
    // Both I/O threads (connections go to them in turn) run at the setting,
    // answer, and a thread they start is back to the default.
    for (int i = 0; i < 4; ++i) {
      ClientResponse r = HttpCall(server->port(), "GET", "/");
      REQUIRE(r.status == 200);
      CHECK(r.body.substr(0, r.body.find('|')) == c.io_threads);
      std::string child = r.body.substr(r.body.find('|') + 1);
      CHECK(child.substr(0, child.find(' ')) == "policy=0");
      if (c.spec.substr(0, 5) == "nice:" && c.spec[5] == '-')
        CHECK(child == "policy=0 nice=0");  // negative nice is not inherited
    }
    // Serving behaviour is unchanged: the echo server's answer is the same.
    server.reset();
    ServeOptions echo = TestOptions();
    echo.io_priority = c.spec;
    auto e = StartEcho(echo);
    CHECK(HttpCall(e->port(), "GET", "/a?x=1").body == "GET|/a|x=1;||");
  }
}

}  // namespace

TEST_CASE("HttpServer answers other connections while an admin request blocks", "[http]") {
  // One I/O thread: every connection shares one event loop, so a blocking
  // handler run on it would hold up the second connection until released.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> admin_started{false};
  ServeOptions o = TestOptions();
  o.threads = 1;
  std::unique_ptr<HttpServer> server;
  REQUIRE(HttpServer::Start(
              o,
              [&](const HttpRequest& r) {
                if (r.path == "/v1/admin/slow") {
                  admin_started = true;
                  released.wait_for(std::chrono::seconds(20));
                  return HttpResponse{200, "text/plain", "slow done"};
                }
                return HttpResponse{200, "text/plain", "fast " + r.path};
              },
              &server)
              .ok());
  std::thread admin([&] {
    TestConnection c(server->port(), 30000);
    auto r = c.Request("POST", "/v1/admin/slow");
    CHECK(r.status == 200);
    CHECK(r.body == "slow done");
  });
  while (!admin_started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  {
    TestConnection c(server->port(), 3000);
    auto r = c.Request("GET", "/v1/score");
    CHECK(r.status == 200);
    CHECK(r.body == "fast /v1/score");
  }
  release.set_value();
  admin.join();
}

TEST_CASE("HttpServer stops while an admin request is queued", "[http]") {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> started{0};
  std::unique_ptr<HttpServer> server;
  REQUIRE(HttpServer::Start(
              TestOptions(),
              [&](const HttpRequest&) {
                ++started;
                released.wait_for(std::chrono::seconds(20));
                return HttpResponse{200, "text/plain", "done"};
              },
              &server)
              .ok());
  TestConnection a(server->port()), b(server->port());
  CHECK(a.SendRaw("POST /v1/admin/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  CHECK(b.SendRaw("POST /v1/admin/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  while (started == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // b is queued behind a
  CHECK(started == 1);
  std::thread stopper([&] { server->Stop(); });  // waits for a, drops b
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  release.set_value();
  stopper.join();
  CHECK(started == 1);
}

namespace {

HttpResponse SliceEcho(const HttpRequest&) {
  return HttpResponse{200, "text/plain",
                      std::to_string(ThreadSliceMicros()) + " " + ThreadScheduling()};
}

}  // namespace

TEST_CASE("HttpServer's I/O threads ask for serve.io_slice_us", "[http][kernel_slice]") {
  const int64_t inherited = ThreadSliceMicros();
  if (inherited == 0) {
    // ctest reports the run as skipped (SKIP_REGULAR_EXPRESSION in serve/CMakeLists.txt).
    WARN("SKIPPED: this kernel reports no time slice (before Linux 6.12)");
    return;
  }
  // A slice unlike the inherited one, so that a thread left alone shows.
  const int64_t asked = inherited == 250 ? 350 : 250;
  struct Case {
    int io_slice_us;
    std::string io_priority;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {int(asked), "", std::to_string(asked) + " " + ThreadScheduling()},
           {0, "", std::to_string(inherited) + " " + ThreadScheduling()},
           {int(asked), "nice:7", std::to_string(asked) + " policy=0 nice=7"}}) {
    INFO(c.io_slice_us << " " << c.io_priority);
    ServeOptions o = TestOptions();
    o.io_slice_us = c.io_slice_us;
    o.io_priority = c.io_priority;
    std::unique_ptr<HttpServer> server;
    REQUIRE(HttpServer::Start(o, SliceEcho, &server).ok());
    for (int i = 0; i < 4; ++i) {  // both I/O threads
      ClientResponse r = HttpCall(server->port(), "GET", "/");
      REQUIRE(r.status == 200);
      CHECK(r.body == c.expected);
    }
  }
  CHECK(ThreadSliceMicros() == inherited);  // the caller's own is untouched
}

}  // namespace recstream::serve
