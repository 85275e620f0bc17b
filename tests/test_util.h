// Helpers for the end-to-end tests: temporary directories, free ports, child
// processes, waiting, and reading JSON answers.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <simdjson.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace recstream::testing {

// A fresh directory removed at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "recstream-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A port that was free a moment ago.
inline uint16_t FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Polls `ready` every 50 ms until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ready();
}

// A child process started with posix_spawn; killed with SIGKILL at scope exit
// if still running. Its output goes to `log_path`.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~ChildProcess() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  bool started() const { return pid_ > 0; }
  void Signal(int sig) { ::kill(pid_, sig); }
  // Waits for exit; returns the exit code, or 128 + signal.
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  bool Running() {
    if (exited_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) exited_ = true;
    return !exited_;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Parses JSON into a DOM document owned by the parser.
class Json {
 public:
  bool Parse(const std::string& text) {
    auto r = parser_.parse(text);
    if (r.error()) return false;
    root_ = r.value_unsafe();
    return true;
  }
  simdjson::dom::element root() const { return root_; }
  // Number at a JSON pointer such as "/events/learned/click"; NaN if absent.
  double Number(const std::string& pointer) const {
    auto e = root_.at_pointer(pointer);
    if (e.error()) return std::nan("");
    double d;
    if (e.get_double().get(d) == simdjson::SUCCESS) return d;
    int64_t i;
    if (e.get_int64().get(i) == simdjson::SUCCESS) return double(i);
    uint64_t u;
    if (e.get_uint64().get(u) == simdjson::SUCCESS) return double(u);
    return std::nan("");
  }
  // The strings of an array at a JSON pointer; empty if absent.
  std::vector<std::string> Strings(const std::string& pointer) const {
    std::vector<std::string> out;
    simdjson::dom::array a;
    if (root_.at_pointer(pointer).get_array().get(a) != simdjson::SUCCESS) return out;
    for (simdjson::dom::element e : a) {
      std::string_view v;
      if (e.get_string().get(v) == simdjson::SUCCESS) out.emplace_back(v);
    }
    return out;
  }
  bool Bool(const std::string& pointer) const {
    auto e = root_.at_pointer(pointer);
    bool b = false;
    return !e.error() && e.get_bool().get(b) == simdjson::SUCCESS && b;
  }

 private:
  simdjson::dom::parser parser_;
  simdjson::dom::element root_;
};

}  // namespace recstream::testing
