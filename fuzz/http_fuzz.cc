// libFuzzer target: HTTP request handling. Arbitrary bytes go through the
// same steps as a connection of serve/http_server.cc (Beast's request parser
// with the server's header and body limits, pipelined requests, ParseTarget,
// the Authorization header) into serve::Api over a small trained model. No
// input may crash; every answer must be a valid status with a JSON body for
// JSON routes.
#include <utility>  // before asio under C++20
//
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>

#include "learner/learner.h"
#include "serve/api.h"
#include "serve/http_server.h"

namespace http = boost::beast::http;
using namespace recstream;

namespace {

struct Fixture {
  serve::ServeOptions options;
  learner::Blend blend;
  std::unique_ptr<learner::Learner> model;
  std::unique_ptr<serve::Api> api;
  Fixture() {
    options.admin_token = "secret";
    learner::LearnerOptions lo;
    lo.dim = 4;
    lo.hidden = 4;
    lo.threads = 1;
    if (!learner::Learner::Create(lo, &model).ok()) std::abort();
    std::vector<learner::Event> events;
    for (int i = 0; i < 50; ++i) {
      learner::Event e;
      e.task = learner::Task(i % 3);
      e.user = "u" + std::to_string(i % 7);
      e.item = "i" + std::to_string(i % 5);
      e.label = e.task == learner::Task::kRating ? 3.0f : float(i % 2);
      events.push_back(e);
    }
    model->Train(events);
    api = std::make_unique<serve::Api>(options, blend, model.get(), nullptr);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture f;
  if (size == 0) return 0;
  boost::beast::flat_buffer buffer;
  auto in = buffer.prepare(size);
  std::memcpy(in.data(), data, size);
  buffer.commit(size);
  // Pipelined requests, as the server reads them off one connection.
  for (int n = 0; n < 8 && buffer.size() > 0; ++n) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(f.options.max_header_bytes));
    parser.body_limit(f.options.max_body_bytes);
    parser.eager(true);
    boost::beast::error_code ec;
    size_t used = parser.put(buffer.data(), ec);
    buffer.consume(used);
    if (ec || !parser.is_done()) {
      // Needs more bytes or is malformed: the server would wait or answer 400.
      if (!parser.is_header_done() || ec) break;
      parser.put_eof(ec);
      if (ec || !parser.is_done()) break;
    }
    auto req = parser.release();
    serve::HttpRequest request;
    request.method = std::string(req.method_string());
    auto target = req.target();
    serve::ParseTarget(std::string_view(target.data(), target.size()), &request.path,
                       &request.query);
    request.body = req.body();
    auto auth = req[http::field::authorization];
    request.authorization.assign(auth.data(), auth.size());
    serve::HttpResponse response = f.api->Handle(request);
    if (response.status < 100 || response.status > 599) std::abort();
    if (response.status >= 400 && response.content_type == "application/json" &&
        response.body.find("\"error\"") == std::string::npos)
      std::abort();
  }
  return 0;
}
