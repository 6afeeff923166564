// A non-owning reference to a callable, for callbacks on hot paths across translation units:
// unlike std::function it never allocates, and it costs one indirect call. The callable must
// outlive the reference (pass lambdas straight into the call that takes it).
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace biodali {

template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F,
            typename = std::enable_if_t<!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
                                        std::is_invocable_r_v<R, F &, Args...>>>
  FunctionRef(F &&f)  // NOLINT(google-explicit-constructor): binds lambdas at call sites
      : object_(const_cast<void *>(static_cast<const void *>(std::addressof(f)))),
        call_([](void *object, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F> *>(object))(std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void *object_;
  R (*call_)(void *, Args...);
};

}  // namespace biodali
