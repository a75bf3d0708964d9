// EMU_REGISTER(name): the kernel `name` of this file, callable by emu.cpp's cuLaunchKernel from
// the driver's kernelParams (one pointer per argument, each to the argument's value).
#pragma once
#include <functional>
#define EMU_CAT2(a, b) a##b
#define EMU_CAT(a, b) EMU_CAT2(a, b)
#include <utility>

// This file's static shared memory, bounded by the linker's symbols for its section.
extern "C" __attribute__((weak)) unsigned char EMU_CAT(__start_, EMU_SHARED_SECTION)[], EMU_CAT(__stop_, EMU_SHARED_SECTION)[];

namespace emu {
void add_kernel(const char* name, std::function<void(void**)> f, SharedSection shared);
template <typename... A, size_t... I>
void call(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
struct Registrar {
    template <typename... A>
    Registrar(const char* name, void (*f)(A...)) {
        add_kernel(name, [f](void** p) { call(f, p, std::index_sequence_for<A...>{}); },
                   {EMU_CAT(__start_, EMU_SHARED_SECTION), EMU_CAT(__stop_, EMU_SHARED_SECTION)});
    }
};
}  // namespace emu
#define EMU_REGISTER(name) static emu::Registrar emu_reg_##name(#name, &name);
