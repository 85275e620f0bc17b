// FloatBuffer: a std::vector<float> whose resize() leaves new elements
// uninitialised, for buffers that are overwritten right after they are sized
// (snapshot rows: zero-filling 300 MB first would cost a pass over memory
// that the copy makes anyway).
#pragma once

#include <memory>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace recstream::learner {

template <typename T>
class UninitAllocator : public std::allocator<T> {
 public:
  template <typename U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <typename U>
  UninitAllocator(const UninitAllocator<U>&) noexcept {}

  // Value-initialisation (what resize() asks for) becomes default-
  // initialisation: nothing for trivial types.
  template <typename U>
  void construct(U* p) noexcept(std::is_nothrow_default_constructible_v<U>) {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

using FloatBuffer = std::vector<float, UninitAllocator<float>>;

}  // namespace recstream::learner
