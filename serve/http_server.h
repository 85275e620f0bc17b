// HttpServer: a small event-driven HTTP/1.1 server (Boost.Beast underneath,
// kept out of this header). Each of a fixed pool of I/O threads runs its own
// event loop; a connection stays on the loop (thread) that accepted it.
//
// Behaviour a client can rely on:
//   - Keep-alive (HTTP/1.1 default, HTTP/1.0 with "Connection: keep-alive").
//     Pipelined requests on one connection are answered in order.
//   - "Expect: 100-continue" is honoured.
//   - A request whose headers exceed ServeOptions::max_header_bytes gets 431,
//     one whose body exceeds max_body_bytes gets 413; both close the
//     connection. A malformed request gets 400 and the connection is closed.
//   - Each request must arrive completely within request_timeout_ms of the
//     previous response (or of the connection being accepted); otherwise the
//     connection is closed silently. Idle keep-alive connections are closed
//     after the same delay, and so is a connection whose client does not
//     read a response within it. A connection is never closed before the
//     delay, and at most 2 x max(5, min(250, request_timeout_ms / 8)) ms
//     after it (deadlines are checked by a sweep, not a timer per read).
//   - Beyond max_connections open connections, new connections receive 503
//     and are closed.
//   - A handler that throws produces 500 {"error": "internal error: ..."}.
//
// Thread safety. The handler is called concurrently from the I/O threads and
// must be thread-safe. It runs on an I/O thread, so a slow handler occupies
// one of ServeOptions::threads for its duration.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/status.h"
#include "serve/options.h"

namespace recstream::serve {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target up to '?', not decoded
  // Query parameters, percent- and '+'-decoded. A repeated key keeps its
  // first value; a key without '=' maps to "".
  std::map<std::string, std::string> query;
  std::string body;
  // The Authorization header, verbatim ("" when absent).
  std::string authorization;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Called on an I/O thread for most requests, so it should not block: the
// other connections of that thread's event loop wait meanwhile. Requests
// whose path begins with "/v1/admin/" (which may block, e.g. a forced
// checkpoint waiting for its write) are called on a separate thread instead,
// one at a time, in arrival order. Must be safe to call from several threads
// at once.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

// Splits "path?query" into the path and the decoded query parameters.
// Exposed for tests.
void ParseTarget(std::string_view target, std::string* path,
                 std::map<std::string, std::string>* query);

class HttpServer {
 public:
  // Listens on options.listen ("host:port", "[v6addr]:port"; port 0 picks a
  // free port) and starts options.threads I/O threads. IOError naming the
  // address when it cannot be resolved or bound; InvalidArgument when
  // options.listen is malformed.
  static Status Start(const ServeOptions& options, HttpHandler handler,
                      std::unique_ptr<HttpServer>* server);

  // Stops (see Stop) and releases everything.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // The port actually bound (the ephemeral one when options.listen asked for
  // port 0).
  uint16_t port() const;
  // ServeOptions::listen with the port bound: "host:port" ("0.0.0.0:8080"
  // stays a wildcard host).
  std::string address() const;

  // Stops accepting, closes every connection and joins the I/O threads.
  // Requests being handled complete, their responses may not be delivered.
  // Idempotent. Must not be called from inside the handler.
  void Stop();

 private:
  struct Impl;
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace recstream::serve
