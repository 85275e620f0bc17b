#include "replicate/http_get.h"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>

namespace recstream::replicate {

namespace beast = boost::beast;
namespace http = beast::http;
namespace asio = boost::asio;

Status HttpGet(const std::string& url, int timeout_ms, std::string* body) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) return Status::InvalidArgument("not an http:// url: " + url);
  const std::string rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  const std::string hostport = rest.substr(0, slash);
  const std::string target = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon + 1 == hostport.size())
    return Status::InvalidArgument("url without a port: " + url);
  std::string host = hostport.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  const std::string port = hostport.substr(colon + 1);
  try {
    asio::io_context ioc;
    asio::ip::tcp::resolver resolver(ioc);
    beast::tcp_stream stream(ioc);
    stream.expires_after(std::chrono::milliseconds(timeout_ms));
    auto results = resolver.resolve(host, port);
    stream.connect(results);
    http::request<http::empty_body> req{http::verb::get, target, 11};
    req.set(http::field::host, hostport);
    req.set(http::field::user_agent, "recstream-replica");
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(1ull << 31);
    http::read(stream, buffer, parser);
    auto& res = parser.get();
    beast::error_code ec;
    stream.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ec);
    if (res.result_int() != 200)
      return Status::Unavailable("GET " + url + ": HTTP " + std::to_string(res.result_int()) +
                                 " " + res.body().substr(0, 300));
    *body = std::move(res.body());
    return Status::OK();
  } catch (const std::exception& e) {
    return Status::Unavailable("GET " + url + ": " + e.what());
  }
}

}  // namespace recstream::replicate
