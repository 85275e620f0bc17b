// Options of serve/. Plain data, cheap to include.
#pragma once

#include <cstddef>
#include <string>

namespace recstream::serve {

struct ServeOptions {
  // host:port to listen on; port 0 picks a free port.
  std::string listen = "127.0.0.1:8080";
  // Admin endpoints need "Authorization: Bearer <admin_token>"; empty
  // disables them.
  std::string admin_token;
  // I/O threads of the HTTP server.
  int threads = 2;
  size_t max_body_bytes = 8 << 20;
  size_t max_header_bytes = 16 << 10;
  int request_timeout_ms = 10000;
  int max_connections = 4096;
  // Most items in one POST /v1/score.
  size_t max_batch_items = 10000;
  // Most k in /v1/recommend.
  int max_k = 1000;
};

}  // namespace recstream::serve
