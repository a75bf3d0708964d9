// EMU_REGISTER(name): the kernel `name` of this file, callable by emu.cpp's cuLaunchKernel from
// the driver's kernelParams (one pointer per argument, each to the argument's value).
#pragma once
#include <functional>
#include <utility>

namespace emu {
void add_kernel(const char* name, std::function<void(void**)> f);
template <typename... A, size_t... I>
void call(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
struct Registrar {
    template <typename... A>
    Registrar(const char* name, void (*f)(A...)) {
        add_kernel(name, [f](void** p) { call(f, p, std::index_sequence_for<A...>{}); });
    }
};
}  // namespace emu
#define EMU_REGISTER(name) static emu::Registrar emu_reg_##name(#name, &name);
