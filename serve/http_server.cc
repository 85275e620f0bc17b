#include "serve/http_server.h"

// Under C++20 asio needs <utility> before its own headers.
#include <utility>
//
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "common/thread_slice.h"

namespace recstream::serve {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `in`, '+' meaning a space (form encoding, as browsers send
// query strings). A '%' not followed by two hex digits is kept literally.
std::string UrlDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out.push_back(' ');
    } else if (c == '%' && i + 2 < in.size() && HexValue(in[i + 1]) >= 0 &&
               HexValue(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(in[i + 1]) * 16 + HexValue(in[i + 2])));
      i += 2;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string ErrorJson(std::string_view message) {
  // Messages here are fixed ASCII text without quotes or backslashes.
  return std::string("{\"error\":\"") + std::string(message) + "\"}";
}

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

// Runs requests that may block (paths under /v1/admin/, e.g. a forced
// checkpoint that waits for its write) on a thread of their own, in order,
// so that they never hold up an event loop and the other connections on it.
class AdminLane {
 public:
  void Start() {
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "http-admin");
      Run();
    });
  }
  void Post(std::function<void()> task) {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    tasks_.push_back(std::move(task));
    cv_.notify_one();
  }
  // Waits for the running task; drops the queued ones (and the sessions
  // they hold) while the event loops still exist.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(mu_);
    tasks_.clear();
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
        if (stopping_) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::thread thread_;
};

// Paths whose handlers may block: admin requests, and snapshot pages (a
// store read, after a forced checkpoint).
bool IsAdminPath(std::string_view path) {
  return path.substr(0, 10) == "/v1/admin/" || path == "/v1/snapshot";
}

// Shared by the server and all its sessions; outlives both (owned by Impl,
// destroyed after the io_context).
struct Shared {
  ServeOptions options;
  HttpHandler handler;
  std::atomic<int> connections{0};
  AdminLane admin;
};

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

class Session;

// One event loop (I/O thread) and the deadlines of its connections. A sweep
// every `tick` closes the connections past their deadline, instead of a
// timer armed and cancelled around every read and write (Beast's
// tcp_stream), which costs microseconds of CPU per request. Deadlines are
// taken from the clock as of the last sweep plus one tick, so a connection is
// never closed early, and at most two ticks late.
struct Loop {
  using Clock = std::chrono::steady_clock;
  explicit Loop(std::chrono::milliseconds request_timeout)
      : ioc(1),
        sweep(ioc),
        timeout(request_timeout),
        tick(std::clamp<std::chrono::milliseconds>(
            request_timeout / 8, std::chrono::milliseconds(5), std::chrono::milliseconds(250))) {}

  // The deadline of something that may take `d` from now.
  Clock::time_point Deadline(std::chrono::milliseconds d) const { return now + d + tick; }
  // Checks the deadlines, then again every tick. Runs on the loop's thread
  // (or before it starts).
  void Sweep();

  net::io_context ioc;  // declared first: destroyed after the timer
  net::steady_timer sweep;
  const std::chrono::milliseconds timeout, tick;
  Clock::time_point now = Clock::now();  // as of the last sweep
  // This loop's connections; used on its thread only. A session is dropped
  // from here by the first sweep after its end.
  std::vector<std::weak_ptr<Session>> sessions;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  // `counted`: the session holds one of max_connections slots.
  Session(tcp::socket&& socket, Shared* shared, Loop* loop, bool counted)
      : socket_(std::move(socket)), shared_(shared), loop_(loop), counted_(counted) {
    if (counted_) shared_->connections.fetch_add(1, std::memory_order_relaxed);
  }
  ~Session() {
    if (counted_) shared_->connections.fetch_sub(1, std::memory_order_relaxed);
  }

  void Start() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      self->loop_->sessions.push_back(self);
      self->ReadRequest();
    });
  }

  // Answers 503 and closes: the server is at max_connections.
  void Reject() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      self->loop_->sessions.push_back(self);
      self->SendError(503, "too many connections", 11);
    });
  }

  // Called by the loop's sweep.
  Loop::Clock::time_point deadline() const { return deadline_; }
  // Past the deadline: closing the socket ends the pending read or write
  // (operation_aborted), whose handler then lets the session go.
  void Expire() {
    deadline_ = Loop::Clock::time_point::max();
    beast::error_code ignored;
    socket_.close(ignored);
  }

 private:
  void ReadRequest() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(
        std::min<size_t>(shared_->options.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(shared_->options.max_body_bytes);
    deadline_ = loop_->Deadline(loop_->timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, std::size_t) {
    if (ec) return OnReadError(ec);
    auto& req = parser_->get();
    auto expect = req[http::field::expect];
    if (IEquals(std::string_view(expect.data(), expect.size()), "100-continue") &&
        !parser_->is_done()) {
      net::async_write(socket_, net::buffer(kContinue.data(), kContinue.size()),
                       [self = shared_from_this()](beast::error_code ec, std::size_t) {
                         if (ec) return self->Close();
                         self->ReadBody();
                       });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    if (parser_->is_done()) return OnRequest();
    // Room for the whole body at once: the buffer otherwise grows from 512
    // bytes, and a 10 KB body (POST /v1/score with 1,000 items) took 8 reads
    // and as many trips through the event loop. At most kBodyReserve ahead
    // of the bytes that arrived, so that a client announcing a large body
    // and sending nothing holds little memory.
    constexpr uint64_t kBodyReserve = 1 << 20;
    if (auto length = parser_->content_length()) {
      const size_t want =
          buffer_.size() +
          size_t(std::min<uint64_t>({*length, shared_->options.max_body_bytes, kBodyReserve}));
      if (buffer_.capacity() < want) buffer_.reserve(want);
    }
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       if (ec) return self->OnReadError(ec);
                       self->OnRequest();
                     });
  }

  void OnReadError(beast::error_code ec) {
    // operation_aborted: the sweep closed the connection at its deadline.
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset) {
      return Close();
    }
    if (ec == http::error::body_limit) return SendError(413, "request body too large", 0);
    if (ec == http::error::header_limit) {
      return SendError(431, "request header fields too large", 0);
    }
    if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
      return SendError(400, "malformed HTTP request", 0);
    }
    Close();
  }

  void OnRequest() {
    http::request<http::string_body> req = parser_->release();
    parser_.reset();
    // The request object is reused across a connection's requests, so that
    // its strings keep their capacity.
    HttpRequest& request = request_;
    request.method.assign(req.method_string().data(), req.method_string().size());
    std::string_view target(req.target().data(), req.target().size());
    ParseTarget(target, &request.path, &request.query);
    auto auth = req[http::field::authorization];
    request.authorization.assign(auth.data(), auth.size());
    request.body = std::move(req.body());

    const unsigned version = req.version();
    const bool keep_alive = req.keep_alive();
    if (IsAdminPath(request.path)) {
      // Off the event loop; the connection reads nothing more until the
      // response is written, so the request stays untouched meanwhile. The
      // server, not the client, takes the time: no deadline until the
      // response is being written.
      deadline_ = Loop::Clock::time_point::max();
      shared_->admin.Post([self = shared_from_this(), version, keep_alive] {
        HttpResponse response = self->Handle(self->request_);
        net::post(self->socket_.get_executor(),
                  [self, version, keep_alive, response = std::move(response)]() mutable {
                    self->Respond(version, response.status, response.content_type,
                                  std::move(response.body), keep_alive, /*retry_after_s=*/0,
                                  /*linger=*/false);
                  });
      });
      return;
    }
    HttpResponse response = Handle(request);
    Respond(version, response.status, response.content_type, std::move(response.body), keep_alive,
            /*retry_after_s=*/0, /*linger=*/false);
  }

  HttpResponse Handle(const HttpRequest& request) {
    try {
      return shared_->handler(request);
    } catch (...) {
      return HttpResponse{500, "application/json", ErrorJson("internal error")};
    }
  }

  // Sends an error response and closes the connection. `retry_after_s` > 0
  // adds a Retry-After header.
  void SendError(int status, std::string_view message, int retry_after_s) {
    Respond(11, status, "application/json", ErrorJson(message), /*keep_alive=*/false, retry_after_s,
            /*linger=*/true);
  }

  // Writes the response head by hand, byte for byte what Beast's serializer
  // wrote for the same response (status line, Server, Content-Type,
  // Retry-After, Connection as keep_alive() sets it, Content-Length), into
  // a buffer the connection keeps; the body is sent from its own string
  // (one gathered write, no copy).
  void Respond(unsigned version, int status, std::string_view content_type, std::string body,
               bool keep_alive, int retry_after_s, bool linger) {
    head_.clear();
    head_ += "HTTP/";
    head_ += char('0' + version / 10);
    head_ += '.';
    head_ += char('0' + version % 10);
    head_ += ' ';
    AppendUint(&head_, static_cast<unsigned>(status));
    head_ += ' ';
    auto reason = http::obsolete_reason(static_cast<http::status>(status));
    head_.append(reason.data(), reason.size());
    head_ += "\r\nServer: recstream\r\nContent-Type: ";
    head_ += content_type;
    head_ += "\r\n";
    if (retry_after_s > 0) {
      head_ += "Retry-After: ";
      AppendUint(&head_, static_cast<unsigned>(retry_after_s));
      head_ += "\r\n";
    }
    if (version >= 11 && !keep_alive) head_ += "Connection: close\r\n";
    if (version < 11 && keep_alive) head_ += "Connection: keep-alive\r\n";
    head_ += "Content-Length: ";
    AppendUint(&head_, body.size());
    head_ += "\r\n\r\n";
    body_ = std::move(body);
    keep_alive_ = keep_alive;
    Write(linger);
  }

  static void AppendUint(std::string* out, uint64_t v) {
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out->append(buf, end);
  }

  void Write(bool linger) {
    deadline_ = loop_->Deadline(loop_->timeout);
    std::array<net::const_buffer, 2> buffers = {net::buffer(head_), net::buffer(body_)};
    // The whole rest in each write_some (asio's own conditions cap each at
    // 64 KiB: two sendmsg calls for a POST /v1/score answer of 1,000 items).
    const size_t total = head_.size() + body_.size();
    auto rest = [total](const beast::error_code& ec, std::size_t done) -> std::size_t {
      return ec ? 0 : total - done;
    };
    net::async_write(socket_, buffers, rest,
                     [self = shared_from_this(), linger](beast::error_code ec, std::size_t) {
                       if (ec) return self->Close();
                       if (!self->keep_alive_) {
                         return linger ? self->LingeringClose() : self->Close();
                       }
                       self->ReadRequest();
                     });
  }

  void Close() {
    deadline_ = Loop::Clock::time_point::max();
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    socket_.close(ignored);
  }

  // Closing a socket with unread input makes the kernel send RST, which can
  // destroy the error response before the client reads it (a client still
  // uploading an oversize body). So: stop sending, then discard input until
  // the client closes or a short deadline passes.
  void LingeringClose() {
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    deadline_ = loop_->Deadline(
        std::min<std::chrono::milliseconds>(loop_->timeout, std::chrono::milliseconds(2000)));
    drain_.resize(16 << 10);
    Drain();
  }

  void Drain() {
    socket_.async_read_some(net::buffer(drain_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec) return self->Expire();
                              self->Drain();
                            });
  }

  tcp::socket socket_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  HttpRequest request_;
  std::string head_, body_;  // the response being written
  bool keep_alive_ = false;
  std::vector<char> drain_;
  Shared* shared_;
  Loop* loop_;
  // When the sweep closes the connection: a request must arrive, and a
  // response be written, within the timeout.
  Loop::Clock::time_point deadline_ = Loop::Clock::time_point::max();
  bool counted_;
};

void Loop::Sweep() {
  now = Clock::now();
  for (size_t i = 0; i < sessions.size();) {
    if (std::shared_ptr<Session> s = sessions[i].lock()) {
      if (s->deadline() <= now) s->Expire();
      ++i;
    } else {
      sessions[i] = std::move(sessions.back());
      sessions.pop_back();
    }
  }
  sweep.expires_after(tick);
  sweep.async_wait([this](beast::error_code ec) {
    if (!ec) Sweep();
  });
}

// Splits "host:port" / "[v6]:port".
Status SplitListen(const std::string& listen, std::string* host, std::string* port) {
  size_t colon;
  if (!listen.empty() && listen[0] == '[') {
    size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return Status::InvalidArgument("serve.listen: expected host:port, got '" + listen + "'");
    }
    *host = listen.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = listen.rfind(':');
    if (colon == std::string::npos) {
      return Status::InvalidArgument("serve.listen: expected host:port, got '" + listen + "'");
    }
    *host = listen.substr(0, colon);
  }
  *port = listen.substr(colon + 1);
  if (port->empty() || port->size() > 5 ||
      !std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoi(*port) > 65535) {
    return Status::InvalidArgument("serve.listen: bad port in '" + listen + "'");
  }
  if (host->empty()) *host = "0.0.0.0";
  return Status::OK();
}

// Applies `p` to the calling thread; "" on success, else what failed.
std::string ApplyIoPriority(const IoPriority& p) {
  auto failed = [&](const char* what, int err) {
    std::string m = std::string(what) + ": " + std::strerror(err);
    if (err == EPERM || err == EACCES) {  // setpriority gives EACCES
      m += p.kind == IoPriority::Kind::kFifo
               ? " (needs CAP_SYS_NICE, e.g. root, or RLIMIT_RTPRIO >= " + std::to_string(p.value) +
                     ")"
               : " (needs CAP_SYS_NICE, e.g. root, or RLIMIT_NICE >= " +
                     std::to_string(20 - p.value) + ")";
    }
    return m;
  };
  switch (p.kind) {
    case IoPriority::Kind::kInherit:
      return "";
    case IoPriority::Kind::kNice: {
      if (setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), p.value) != 0)
        return failed("setpriority", errno);
      // Threads started from here (none today) keep the default nice.
      sched_param param{};
      if (sched_setscheduler(0, SCHED_OTHER | SCHED_RESET_ON_FORK, &param) != 0)
        return failed("sched_setscheduler(SCHED_OTHER)", errno);
      return "";
    }
    case IoPriority::Kind::kFifo: {
      sched_param param{};
      param.sched_priority = p.value;
      if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &param) != 0)
        return failed("sched_setscheduler(SCHED_FIFO)", errno);
      return "";
    }
  }
  return "";
}

}  // namespace

void ParseTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query) {
  size_t q = target.find('?');
  path->assign(target.substr(0, q));
  query->clear();
  if (q == std::string_view::npos) return;
  std::string_view rest = target.substr(q + 1);
  size_t hash = rest.find('#');
  if (hash != std::string_view::npos) rest = rest.substr(0, hash);
  while (!rest.empty()) {
    size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string key = UrlDecode(pair.substr(0, eq));
    std::string value =
        eq == std::string_view::npos ? std::string() : UrlDecode(pair.substr(eq + 1));
    query->emplace(std::move(key), std::move(value));  // first value wins
  }
}

struct HttpServer::Impl {
  // Declared first: destroyed last, after every session.
  Shared shared;
  // One event loop per I/O thread: a connection lives on one loop, so its
  // handlers never hop threads (no strand, no cross-thread wake-ups); new
  // connections go to the loops in turn. The acceptor runs on the first.
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<net::executor_work_guard<net::io_context::executor_type>> work;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<net::steady_timer> retry_timer;
  std::vector<std::thread> threads;
  size_t next_loop = 0;  // used by the accepting loop only
  uint16_t port = 0;
  bool stopped = false;

  void Accept() {
    Loop* loop = loops[next_loop].get();
    next_loop = (next_loop + 1) % loops.size();
    acceptor->async_accept(loop->ioc, [this, loop](beast::error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted) return;
      if (ec) {
        // Typically EMFILE: back off briefly instead of spinning.
        retry_timer->expires_after(std::chrono::milliseconds(50));
        retry_timer->async_wait([this](beast::error_code ec) {
          if (!ec) Accept();
        });
        return;
      }
      beast::error_code ignored;
      s.set_option(tcp::no_delay(true), ignored);
      if (shared.connections.load(std::memory_order_relaxed) >= shared.options.max_connections) {
        std::make_shared<Session>(std::move(s), &shared, loop, false)->Reject();
      } else {
        std::make_shared<Session>(std::move(s), &shared, loop, true)->Start();
      }
      Accept();
    });
  }
};

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpServer::~HttpServer() { Stop(); }

uint16_t HttpServer::port() const { return impl_->port; }

std::string HttpServer::address() const {
  const std::string& listen = impl_->shared.options.listen;
  return listen.substr(0, listen.rfind(':')) + ":" + std::to_string(impl_->port);
}

Status HttpServer::Start(const ServeOptions& options, HttpHandler handler,
                         std::unique_ptr<HttpServer>* server) {
  std::string host, port;
  RECSTREAM_RETURN_IF_ERROR(SplitListen(options.listen, &host, &port));
  IoPriority priority;
  if (!ParseIoPriority(options.io_priority, &priority)) {
    return Status::InvalidArgument("serve.io_priority: expected \"\", nice:N (-20..19) or " +
                                   std::string("fifo:P (1..99), got '") + options.io_priority +
                                   "'");
  }
  auto impl = std::make_unique<Impl>();
  impl->shared.options = options;
  impl->shared.handler = std::move(handler);
  const std::chrono::milliseconds timeout(std::max(1, options.request_timeout_ms));
  int threads = std::max(1, options.threads);
  for (int i = 0; i < threads; ++i) impl->loops.push_back(std::make_unique<Loop>(timeout));

  beast::error_code ec;
  tcp::resolver resolver(impl->loops[0]->ioc);
  auto results = resolver.resolve(host, port, tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Status::IOError("cannot resolve listen address " + options.listen + ": " +
                           (ec ? ec.message() : "no address"));
  }
  tcp::endpoint endpoint = results.begin()->endpoint();
  impl->acceptor = std::make_unique<tcp::acceptor>(impl->loops[0]->ioc);
  auto& acceptor = *impl->acceptor;
  auto fail = [&](const char* what) {
    return Status::IOError("cannot listen on " + options.listen + " (" + what +
                           "): " + ec.message());
  };
  if (acceptor.open(endpoint.protocol(), ec)) return fail("open");
  if (acceptor.set_option(net::socket_base::reuse_address(true), ec)) return fail("setsockopt");
  if (acceptor.bind(endpoint, ec)) return fail("bind");
  if (acceptor.listen(net::socket_base::max_listen_connections, ec)) return fail("listen");
  impl->port = acceptor.local_endpoint(ec).port();
  if (ec) return fail("getsockname");

  impl->retry_timer = std::make_unique<net::steady_timer>(impl->loops[0]->ioc);
  impl->shared.admin.Start();
  for (auto& loop : impl->loops) {
    impl->work.push_back(net::make_work_guard(loop->ioc));
    loop->Sweep();  // before its thread starts
  }
  impl->Accept();
  // Each thread reports whether it could take the asked-for priority before
  // it serves its first request.
  std::vector<std::promise<std::string>> applied(threads);
  for (int i = 0; i < threads; ++i) {
    net::io_context* ioc = &impl->loops[i]->ioc;
    impl->threads.emplace_back([ioc, priority, io_slice_us = options.io_slice_us,
                                result = &applied[i]] {
      pthread_setname_np(pthread_self(), "http-io");
      std::string error = ApplyIoPriority(priority);
      // A hint the kernel may ignore, and not for SCHED_FIFO threads
      // (common/thread_slice.h): no error.
      if (error.empty()) (void)SetThreadSliceMicros(io_slice_us);
      result->set_value(std::move(error));
      // Handlers catch their own exceptions; this guards against the
      // unexpected so that one failure cannot take the process down.
      for (;;) {
        try {
          ioc->run();
          return;
        } catch (...) {
        }
      }
    });
  }
  std::unique_ptr<HttpServer> started(new HttpServer(std::move(impl)));
  for (auto& result : applied) {
    std::string error = result.get_future().get();
    if (!error.empty()) {
      started->Stop();
      return Status::InvalidArgument("serve.io_priority=" + options.io_priority +
                                     ": cannot apply it to the HTTP I/O threads: " + error);
    }
  }
  *server = std::move(started);
  return Status::OK();
}

void HttpServer::Stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  impl_->work.clear();
  for (auto& loop : impl_->loops) loop->ioc.stop();
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
  impl_->shared.admin.Stop();
  // Destroying the io_contexts destroys the pending handlers and with them
  // every session, which closes their sockets.
  impl_->retry_timer.reset();
  impl_->acceptor.reset();
  impl_->loops.clear();
}

}  // namespace recstream::serve
