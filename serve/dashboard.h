// The live dashboard served at `/`: one self-contained HTML page (inline CSS
// and JavaScript, no external resources) that polls /v1/history and
// /v1/stats and draws the charts on canvases. The page's source is
// serve/dashboard.html, embedded into the binary at build time.
#pragma once

#include <string_view>

namespace recstream::serve {

// The page, UTF-8. Valid for the life of the program.
std::string_view DashboardHtml();

}  // namespace recstream::serve
