// A minimal blocking HTTP/1.1 GET, for a replica fetching a trainer's
// snapshot pages (Boost.Beast underneath, kept out of this header).
#pragma once

#include <string>

#include "common/status.h"

namespace recstream::replicate {

// GET `url` ("http://host:port/path?query"; no TLS). OK with the body for
// status 200; Unavailable (naming the url) when the server cannot be
// reached or answers with another status (the body's text in the message),
// or when it takes longer than `timeout_ms`; InvalidArgument for a url
// that is not http://host:port/...
Status HttpGet(const std::string& url, int timeout_ms, std::string* body);

}  // namespace recstream::replicate
