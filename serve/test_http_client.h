// A tiny blocking HTTP/1.1 client over POSIX sockets, for serve/ tests only.
// Deliberately independent of the server's implementation (no Beast).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace recstream::serve::testing {

struct ClientResponse {
  int status = 0;                              // 0: no response (connection closed or timed out)
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

class TestConnection {
 public:
  // Connects to 127.0.0.1:port; reads time out after `timeout_ms`.
  explicit TestConnection(uint16_t port, int timeout_ms = 5000) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~TestConnection() {
    if (fd_ >= 0) ::close(fd_);
  }
  TestConnection(const TestConnection&) = delete;
  TestConnection& operator=(const TestConnection&) = delete;

  bool connected() const { return connected_; }
  int fd() const { return fd_; }

  bool SendRaw(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  static std::string Format(const std::string& method, const std::string& target,
                            const std::string& body = "", const std::string& extra_headers = "") {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra_headers;
    if (!body.empty() || method == "POST") {
      req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    req += "\r\n" + body;
    return req;
  }

  // Reads one response (Content-Length framed, as the server always sends).
  ClientResponse Read() {
    ClientResponse r;
    size_t header_end;
    while ((header_end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return r;
    }
    std::string head = buf_.substr(0, header_end);
    buf_.erase(0, header_end + 4);
    size_t line_end = head.find("\r\n");
    std::string status_line = head.substr(0, line_end);
    size_t sp = status_line.find(' ');
    if (sp == std::string::npos) return r;
    r.status = std::atoi(status_line.c_str() + sp + 1);
    size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
    while (pos < head.size()) {
      size_t e = head.find("\r\n", pos);
      if (e == std::string::npos) e = head.size();
      std::string line = head.substr(pos, e - pos);
      pos = e + 2;
      size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      std::string name = line.substr(0, colon);
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return std::tolower(c); });
      size_t v = line.find_first_not_of(' ', colon + 1);
      r.headers[name] = v == std::string::npos ? "" : line.substr(v);
    }
    if (r.status == 100) return Read();
    size_t length = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    while (buf_.size() < length) {
      if (!Fill()) {
        r.status = 0;
        return r;
      }
    }
    r.body = buf_.substr(0, length);
    buf_.erase(0, length);
    return r;
  }

  ClientResponse Request(const std::string& method, const std::string& target,
                         const std::string& body = "", const std::string& extra_headers = "") {
    if (!SendRaw(Format(method, target, body, extra_headers))) return {};
    return Read();
  }

  // True when the server closed the connection (EOF) within the timeout.
  bool WaitClosed() {
    char c;
    for (;;) {
      ssize_t n = ::recv(fd_, &c, 1, 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

 private:
  // Reads what has arrived, up to 256 KiB at once (a 1,000-item score
  // response is ~85 KB: a small buffer would wake the client several times).
  bool Fill() {
    if (chunk_.empty()) chunk_.resize(256 * 1024);
    ssize_t n = ::recv(fd_, chunk_.data(), chunk_.size(), 0);
    if (n <= 0) return false;
    buf_.append(chunk_.data(), static_cast<size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
  std::vector<char> chunk_;
};

// One request on a fresh connection.
inline ClientResponse HttpCall(uint16_t port, const std::string& method, const std::string& target,
                               const std::string& body = "",
                               const std::string& extra_headers = "") {
  TestConnection c(port);
  return c.Request(method, target, body, extra_headers);
}

}  // namespace recstream::serve::testing
