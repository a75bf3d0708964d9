// A stand-in libcuda.so.1 that runs ffkern's sm_80 kernels on the CPU: the driver API calls that
// cudarc makes (device, context, streams and events, memory, modules, launches) over host memory,
// and each launch run block by block, a block's threads as fibers (see emu.h). Kernels are
// looked up by name among the kernel files compiled into this library; PTX is not read. Every
// call is synchronous, so streams and events only keep order trivially. It reports compute
// capability 8.0, so the Hopper (sm_90a) kernels are never asked for.
#include "emu.h"

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace emu {
Thread* cur = nullptr;
dim3 block_idx, block_dim, grid_dim;
unsigned char* dyn_smem = nullptr;
uint32_t dyn_smem_bytes = 0;

struct Kernel {
    std::function<void(void**)> fn;
    SharedSection shared;
};
std::map<std::string, Kernel>& registry() {
    static std::map<std::string, Kernel> r;
    return r;
}
void add_kernel(const char* name, std::function<void(void**)> f, SharedSection shared) { registry()[name] = {std::move(f), shared}; }

enum State { RUNNABLE, WAIT_BAR, WAIT_COLL, DONE };
struct Copy {
    void* dst;
    const void* src;
    int bytes;
};
// A fiber switch: push the callee-saved registers, swap stacks, pop the other side's (x86-64
// System V; ucontext's swapcontext also saves the signal mask, a system call per switch).
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");

struct Fiber : Thread {
    void* sp = nullptr;
    char* stack = nullptr;
    State state = RUNNABLE;
    Coll* coll = nullptr;
    std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
    std::vector<Copy> open;                 // copies since the last commit
};
constexpr size_t STACK = 512 << 10;
static std::vector<Fiber> fibers;
static void* sched_sp = nullptr;
static const char* kernel_name = "";
static const Kernel* kernel = nullptr;
static void** kernel_params = nullptr;

[[noreturn]] void trap(const char* what) {
    std::fprintf(stderr, "cuda-emu: %s in %s, block (%u,%u,%u) thread (%u,%u,%u)\n", what, kernel_name, block_idx.x, block_idx.y, block_idx.z,
                 cur ? cur->tid.x : 0, cur ? cur->tid.y : 0, cur ? cur->tid.z : 0);
    std::abort();
}

static Fiber& me() { return *static_cast<Fiber*>(cur); }
static void yield_as(State s) {
    Fiber& f = me();
    f.state = s;
    emu_switch(&f.sp, sched_sp);
    cur = &f;
}
void syncthreads() { yield_as(WAIT_BAR); }
void collective(Coll& c) {
    me().coll = &c;
    yield_as(WAIT_COLL);
    me().coll = nullptr;
}

static void do_copy(const Copy& c) {
    std::memcpy(c.dst, c.src, (size_t)c.bytes);
    std::memset((char*)c.dst + c.bytes, 0, 16 - (size_t)c.bytes);
}
void cp_async(void* dst, const void* src, int src_bytes) {
    if (src_bytes < 0 || src_bytes > 16) trap("cp.async of more than 16 bytes");
    if ((uintptr_t)dst % 16 || (src_bytes && (uintptr_t)src % 16)) trap("cp.async of a misaligned 16-byte piece");
    me().open.push_back({dst, src, src_bytes});
}
void cp_commit() {
    Fiber& f = me();
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}
void cp_wait(int pending) {
    Fiber& f = me();
    while ((int)f.groups.size() > pending) {
        for (const Copy& c : f.groups.front()) do_copy(c);
        f.groups.erase(f.groups.begin());
    }
}

// A fiber's first frame: the kernel, then back to the scheduler for good.
static void entry() {
    kernel->fn(kernel_params);
    Fiber& f = me();
    f.state = DONE;
    emu_switch(&f.sp, sched_sp);
    std::abort();  // a finished fiber is never resumed
}

// ---- warp collectives ----
static uint32_t lanes_of(uint32_t nthreads, uint32_t w) {
    const uint32_t n = std::min<uint32_t>(32, nthreads - 32 * w);
    return n == 32 ? 0xffffffffu : (1u << n) - 1;
}
static float bf(uint32_t h) { return __uint_as_float(h << 16); }
static float hf(uint32_t h) { return __half2float(__half{(uint16_t)h}); }
// Element (row, col) of an mma operand from the lanes' registers. A 16×16 (f16/bf16): a0 (g, 2t..),
// a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..); B 16×8: b0 (k 2t.., n g), b1 (k 2t + 8..,
// n g). TF32 A 16×8: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B 8×8: b0 (t, g),
// b1 (t + 4, g). C/D 16×8: c0, c1 (g, 2t, 2t + 1), c2, c3 (g + 8, ...).
static void resolve_mma(Kind k, Coll* const* lane) {
    float A[16][16] = {}, B[16][8] = {};
    for (uint32_t l = 0; l < 32; ++l) {
        const uint32_t g = l / 4, t = l % 4;
        const Coll& c = *lane[l];
        if (k == MMA_TF32) {
            const auto v = [](uint32_t u) { return __uint_as_float(u & 0xffffe000u); };
            A[g][t] = v(c.a[0]), A[g + 8][t] = v(c.a[1]), A[g][t + 4] = v(c.a[2]), A[g + 8][t + 4] = v(c.a[3]);
            B[t][g] = v(c.b[0]), B[t + 4][g] = v(c.b[1]);
        } else {
            const auto v = [k](uint32_t u, int hi) { return k == MMA_F16 ? hf(hi ? u >> 16 : u & 0xffff) : bf(hi ? u >> 16 : u & 0xffff); };
            for (int h = 0; h < 2; ++h) {
                A[g][2 * t + h] = v(c.a[0], h), A[g + 8][2 * t + h] = v(c.a[1], h);
                A[g][2 * t + 8 + h] = v(c.a[2], h), A[g + 8][2 * t + 8 + h] = v(c.a[3], h);
                B[2 * t + h][g] = v(c.b[0], h), B[2 * t + 8 + h][g] = v(c.b[1], h);
            }
        }
    }
    const int K = k == MMA_TF32 ? 8 : 16;
    for (uint32_t l = 0; l < 32; ++l) {
        const uint32_t g = l / 4, t = l % 4;
        Coll& c = *lane[l];
        for (int i = 0; i < 4; ++i) {
            const uint32_t row = g + 8 * (i / 2), col = 2 * t + i % 2;
            double s = c.c[i];
            for (int kk = 0; kk < K; ++kk) s += (double)A[row][kk] * B[kk][col];
            c.d[i] = (float)s;
        }
    }
}
// ldmatrix .x4: lanes 8j .. 8j + 7 give matrix j's row addresses (16 bytes each); lane l receives
// matrix j's (row l / 4, columns 2(l % 4), +1), or with .trans (rows 2(l % 4), +1 of column l / 4).
static void resolve_ldmatrix(bool trans, Coll* const* lane) {
    for (uint32_t l = 0; l < 32; ++l)
        for (uint32_t j = 0; j < 4; ++j) {
            uint16_t e[2];
            for (uint32_t h = 0; h < 2; ++h) {
                const uint32_t row = trans ? 2 * (l % 4) + h : l / 4, col = trans ? l / 4 : 2 * (l % 4) + h;
                const uint64_t addr = lane[8 * j + row]->value;
                if (addr % 16) trap("ldmatrix row address not 16-byte aligned");
                std::memcpy(&e[h], (const char*)(uintptr_t)addr + 2 * col, 2);
            }
            lane[l]->r[j] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
        }
}
// Resolves warp w's collective if every live lane it names has arrived at one of the same kind
// (or, `force`, an activemask with the lanes that are waiting on it).
static bool resolve_warp(uint32_t w, uint32_t nthreads, bool force) {
    const uint32_t live_lanes = lanes_of(nthreads, w);
    Coll* lane[32] = {};
    uint32_t waiting = 0, live = 0;
    for (uint32_t l = 0; l < 32; ++l) {
        if (!(live_lanes >> l & 1)) continue;
        Fiber& f = fibers[32 * w + l];
        if (f.state != DONE) live |= 1u << l;
        if (f.state == WAIT_COLL) waiting |= 1u << l, lane[l] = f.coll;
    }
    if (!waiting) return false;
    const Coll& first = *lane[__builtin_ctz(waiting)];
    const Kind k = first.kind;
    uint32_t part;
    if (force) {
        if (k != ACTIVEMASK) return false;
        part = 0;
        for (uint32_t l = 0; l < 32; ++l)
            if (waiting >> l & 1 && lane[l]->kind == ACTIVEMASK) part |= 1u << l;
    } else {
        part = (k == ACTIVEMASK ? live : first.mask) & live;
        if ((part & waiting) != part) return false;
        for (uint32_t l = 0; l < 32; ++l)
            if (part >> l & 1 && lane[l]->kind != k) return false;
    }
    if (k == LDMATRIX || k == LDMATRIX_T || k == MMA_F16 || k == MMA_BF16 || k == MMA_TF32) {
        if (part != 0xffffffffu) trap("ldmatrix/mma.sync without all 32 lanes");
        if (k == LDMATRIX || k == LDMATRIX_T) resolve_ldmatrix(k == LDMATRIX_T, lane);
        else resolve_mma(k, lane);
    } else {
        for (uint32_t l = 0; l < 32; ++l) {
            if (!(part >> l & 1)) continue;
            Coll& c = *lane[l];
            const int w = c.width > 0 ? c.width : 32, base = (int)l & ~(w - 1);
            int src = (int)l;
            switch (k) {
            case SHFL_IDX: src = base + (c.arg & (w - 1)); break;
            case SHFL_XOR: src = (int)l ^ c.arg; break;
            case SHFL_DOWN: src = (int)l + c.arg; break;
            case SHFL_UP: src = (int)l - c.arg; break;
            default: break;
            }
            if (src < base || src >= base + w) src = (int)l;
            uint32_t m = 0;
            for (uint32_t o = 0; o < 32; ++o)
                if (part >> o & 1 && (k == MATCH_ANY ? lane[o]->value == c.value : lane[o]->value != 0)) m |= 1u << o;
            switch (k) {
            case SHFL_IDX:
            case SHFL_XOR:
            case SHFL_DOWN:
            case SHFL_UP:
                if (!(part >> src & 1)) trap("shuffle from a lane outside the mask");
                c.result = lane[src]->value;
                break;
            case MATCH_ANY:
            case BALLOT: c.result = m; break;
            case ANY: c.result = m != 0; break;
            case ALL: c.result = m == part; break;
            case ACTIVEMASK: c.result = part; break;
            default: c.result = 0;
            }
        }
    }
    for (uint32_t l = 0; l < 32; ++l)
        if (part >> l & 1) fibers[32 * w + l].state = RUNNABLE;
    return true;
}

// Threads run in index order between synchronisations, so a read of shared memory that another
// thread writes without a barrier in between sees the old value (or the poison) when the writer
// comes later; CUDA_EMU_ORDER=reverse runs them last to first, for the writers that come earlier.
static const bool reverse = [] {
    const char* o = std::getenv("CUDA_EMU_ORDER");
    return o && std::string(o) == "reverse";
}();

static void run_block(uint32_t nthreads) {
    for (uint32_t i = 0; i < nthreads; ++i) {
        Fiber& f = fibers[i];
        f.tid = {i % block_dim.x, i / block_dim.x % block_dim.y, i / (block_dim.x * block_dim.y)};
        f.state = RUNNABLE;
        f.groups.clear();
        f.open.clear();
        // emu_switch's frame on the new stack: six registers, then entry as the return address,
        // placed so that entry starts with the stack aligned as after a call.
#if defined(__SANITIZE_ADDRESS__)
        // The frames a finished fiber left (its first one never returns) keep their poison.
        __asan_unpoison_memory_region(f.stack, STACK);
#endif
        void** top = (void**)(f.stack + STACK);
        top[-1] = nullptr;
        top[-2] = (void*)entry;
        for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
        f.sp = &top[-8];
    }
    const uint32_t warps = (nthreads + 31) / 32;
    for (;;) {
        for (uint32_t n = 0; n < nthreads; ++n) {
            const uint32_t i = reverse ? nthreads - 1 - n : n;
            if (fibers[i].state != RUNNABLE) continue;
            cur = &fibers[i];
            emu_switch(&sched_sp, fibers[i].sp);
            cur = nullptr;
        }
        bool all_done = true, all_bar = true, progress = false;
        for (uint32_t i = 0; i < nthreads; ++i) {
            all_done &= fibers[i].state == DONE;
            all_bar &= fibers[i].state == DONE || fibers[i].state == WAIT_BAR;
        }
        if (all_done) return;
        for (uint32_t w = 0; w < warps; ++w) progress |= resolve_warp(w, nthreads, false);
        if (progress) continue;
        if (all_bar) {
            for (uint32_t i = 0; i < nthreads; ++i)
                if (fibers[i].state == WAIT_BAR) fibers[i].state = RUNNABLE;
            continue;
        }
        for (uint32_t w = 0; w < warps; ++w) progress |= resolve_warp(w, nthreads, true);
        if (progress) continue;
        uint32_t bar = 0, coll = 0;
        for (uint32_t i = 0; i < nthreads; ++i) bar += fibers[i].state == WAIT_BAR, coll += fibers[i].state == WAIT_COLL;
        cur = nullptr;
        std::fprintf(stderr, "cuda-emu: deadlock in %s block (%u,%u,%u): %u threads at __syncthreads, %u at a warp collective\n", kernel_name,
                     block_idx.x, block_idx.y, block_idx.z, bar, coll);
        std::abort();
    }
}

// Fills [begin, end) with 0xff; under AddressSanitizer only its addressable bytes, leaving the
// redzones between the arrays (whose accesses it reports) alone.
static void poison(unsigned char* begin, unsigned char* end) {
#if defined(__SANITIZE_ADDRESS__)
    while (begin < end) {
        auto* bad = (unsigned char*)__asan_region_is_poisoned(begin, (size_t)(end - begin));
        if (!bad) bad = end;
        std::memset(begin, 0xff, (size_t)(bad - begin));
        for (begin = bad; begin < end && __asan_address_is_poisoned(begin); ++begin) {
        }
    }
#else
    std::memset(begin, 0xff, (size_t)(end - begin));
#endif
}

static std::mutex launch_lock;
int launch(const char* name, const Kernel* k, dim3 grid, dim3 block, uint32_t smem, void** params) {
    std::lock_guard<std::mutex> g(launch_lock);
    const uint32_t nthreads = block.x * block.y * block.z;
    if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) return 1;  // invalid value
    while (fibers.size() < nthreads) {
        fibers.emplace_back();
        void* s = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s == MAP_FAILED) return 2;
        fibers.back().stack = (char*)s;
    }
    kernel_name = name, kernel = k, kernel_params = params;
    grid_dim = grid, block_dim = block;
    std::vector<unsigned char> dyn(smem + 16);
    dyn_smem = (unsigned char*)(((uintptr_t)dyn.data() + 15) & ~(uintptr_t)15);
    dyn_smem_bytes = smem;
    for (uint32_t z = 0; z < grid.z; ++z)
        for (uint32_t y = 0; y < grid.y; ++y)
            for (uint32_t x = 0; x < grid.x; ++x) {
                block_idx = {x, y, z};
                // NaN in every float type, so that what a block reads before writing shows.
                std::memset(dyn_smem, 0xff, smem);
                poison(k->shared.begin, k->shared.end);
                run_block(nthreads);
            }
    dyn_smem = nullptr;
    return 0;
}
}  // namespace emu

// ---- the driver API ----
using CUresult = int;
using CUdeviceptr = unsigned long long;
enum : int { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_FOUND = 500, NOT_SUPPORTED = 801 };

static std::mutex mem_lock;
static std::unordered_map<uintptr_t, size_t> sizes;
static uint64_t used = 0, high = 0;
// The emulated device's memory: host memory, up to this much at a time.
constexpr uint64_t DEVICE_BYTES = (uint64_t)4 << 30;
static CUresult mem_alloc(CUdeviceptr* p, size_t bytes) {
    std::lock_guard<std::mutex> g(mem_lock);
    if (bytes > DEVICE_BYTES - used) return OUT_OF_MEMORY;
    // Exactly `bytes` (256-byte aligned, as cuMemAlloc's), so that under CUDA_EMU_ASAN an access
    // past the end is one.
    void* q = nullptr;
    if (posix_memalign(&q, 256, bytes ? bytes : 1) != 0) return OUT_OF_MEMORY;
    sizes[(uintptr_t)q] = bytes;
    used += bytes;
    high = std::max(high, used);
    *p = (CUdeviceptr)(uintptr_t)q;
    return OK;
}
static CUresult mem_free(CUdeviceptr p) {
    if (!p) return OK;
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = sizes.find((uintptr_t)p);
    if (it == sizes.end()) return INVALID_VALUE;
    used -= it->second;
    sizes.erase(it);
    std::free((void*)(uintptr_t)p);
    return OK;
}

struct Event {
    std::chrono::steady_clock::time_point t;
};
struct Func {
    std::string name;
    const emu::Kernel* fn;
    int max_dynamic_smem = 48 << 10;  // raised by cuFuncSetAttribute, as on a GPU
};
static int dummy_ctx, dummy_pool;

extern "C" {
CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { return *v = 13000, OK; }
CUresult cuDeviceGetCount(int* n) { return *n = 1, OK; }
CUresult cuDeviceGet(int* d, int ordinal) { return ordinal == 0 ? (*d = 0, OK) : INVALID_VALUE; }
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "cuda-emu (CPU, sm_80)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) { return *b = DEVICE_BYTES, OK; }
CUresult cuMemGetInfo_v2(size_t* fr, size_t* total) {
    *total = DEVICE_BYTES;
    *fr = *total - used;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 1: *v = 1024; break;                // max threads per block
    case 2: *v = 1024; break;                // block dim x
    case 3: *v = 1024; break;                // block dim y
    case 4: *v = 64; break;                  // block dim z
    case 5: *v = 2147483647; break;          // grid dim x
    case 6: *v = 65535; break;               // grid dim y
    case 7: *v = 65535; break;               // grid dim z
    case 8: *v = 49152; break;               // shared memory per block
    case 10: *v = 32; break;                 // warp size
    case 12: *v = 65536; break;              // registers per block
    case 16: *v = 4; break;                  // multiprocessors
    case 75: *v = 8; break;                  // compute capability major
    case 76: *v = 0; break;                  // minor
    case 81: *v = 166912; break;             // shared memory per multiprocessor
    case 82: *v = 65536; break;              // registers per multiprocessor
    case 97: *v = 166912; break;             // max shared memory per block, opt-in
    case 115: *v = 1; break;                 // memory pools supported
    default: *v = 0;
    }
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) { return *ctx = &dummy_ctx, OK; }
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(void*) { return OK; }
CUresult cuCtxGetCurrent(void** c) { return *c = &dummy_ctx, OK; }
CUresult cuCtxPushCurrent_v2(void*) { return OK; }
CUresult cuCtxPopCurrent_v2(void** c) { return c ? (*c = &dummy_ctx, OK) : OK; }
CUresult cuCtxGetDevice(int* d) { return *d = 0, OK; }
CUresult cuCtxSynchronize() { return OK; }
CUresult cuCtxGetStreamPriorityRange(int* lo, int* hi) {
    if (lo) *lo = 0;
    if (hi) *hi = 0;
    return OK;
}
CUresult cuStreamCreate(void** s, unsigned) { return *s = new int(0), OK; }
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { return *s = new int(0), OK; }
CUresult cuStreamDestroy_v2(void* s) { return delete (int*)s, OK; }
CUresult cuStreamSynchronize(void*) { return OK; }
CUresult cuStreamQuery(void*) { return OK; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
CUresult cuEventCreate(void** e, unsigned) { return *e = new Event{std::chrono::steady_clock::now()}, OK; }
CUresult cuEventDestroy_v2(void* e) { return delete (Event*)e, OK; }
CUresult cuEventRecord(void* e, void*) { return ((Event*)e)->t = std::chrono::steady_clock::now(), OK; }
CUresult cuEventRecordWithFlags(void* e, void*, unsigned) { return ((Event*)e)->t = std::chrono::steady_clock::now(), OK; }
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(((Event*)b)->t - ((Event*)a)->t).count();
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t b) { return mem_alloc(p, b); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t b, void*) { return mem_alloc(p, b); }
CUresult cuMemAllocFromPoolAsync(CUdeviceptr* p, size_t b, void*, void*) { return mem_alloc(p, b); }
CUresult cuMemFree_v2(CUdeviceptr p) { return mem_free(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return mem_free(p); }
CUresult cuDeviceGetMemPool(void** p, int) { return *p = &dummy_pool, OK; }
CUresult cuDeviceGetDefaultMemPool(void** p, int) { return *p = &dummy_pool, OK; }
CUresult cuMemPoolSetAttribute(void*, int attr, void* v) {
    if (attr == 8) high = *(uint64_t*)v ? high : used;  // USED_MEM_HIGH reset
    return OK;
}
CUresult cuMemPoolGetAttribute(void*, int attr, void* v) {
    switch (attr) {
    case 7: *(uint64_t*)v = used; return OK;  // USED_MEM_CURRENT
    case 8: *(uint64_t*)v = high; return OK;  // USED_MEM_HIGH
    case 5: *(uint64_t*)v = used; return OK;  // RESERVED_MEM_CURRENT
    case 6: *(uint64_t*)v = high; return OK;  // RESERVED_MEM_HIGH
    default: *(uint64_t*)v = 0; return OK;
    }
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t b) { return std::memcpy((void*)(uintptr_t)d, s, b), OK; }
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t b, void*) { return cuMemcpyHtoD_v2(d, s, b); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t b) { return std::memcpy(d, (const void*)(uintptr_t)s, b), OK; }
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t b, void*) { return cuMemcpyDtoH_v2(d, s, b); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t b) { return std::memmove((void*)(uintptr_t)d, (const void*)(uintptr_t)s, b), OK; }
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t b, void*) { return cuMemcpyDtoD_v2(d, s, b); }
CUresult cuMemcpyAsync(CUdeviceptr d, CUdeviceptr s, size_t b, void*) { return cuMemcpyDtoD_v2(d, s, b); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) { return std::memset((void*)(uintptr_t)d, v, n), OK; }
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(d, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr d, unsigned v, size_t n) {
    for (size_t i = 0; i < n; ++i) std::memcpy((char*)(uintptr_t)d + 4 * i, &v, 4);
    return OK;
}
CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void*) { return cuMemsetD32_v2(d, v, n); }
CUresult cuModuleLoadData(void** m, const void*) { return *m = new int(0), OK; }
CUresult cuModuleUnload(void* m) { return delete (int*)m, OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    auto& r = emu::registry();
    auto it = r.find(name);
    if (it == r.end()) return NOT_FOUND;
    *f = new Func{name, &it->second};
    return OK;
}
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
    if (attr == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (v < 0 || v > 166912) return INVALID_VALUE;
        ((Func*)f)->max_dynamic_smem = v;
    }
    return OK;
}
CUresult cuFuncGetAttribute(int* v, int, void*) { return *v = 0, OK; }
CUresult cuFuncSetCacheConfig(void*, int) { return OK; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void*, void** params,
                        void**) {
    Func* fn = (Func*)f;
    if ((int)smem > fn->max_dynamic_smem || bz > 64) return INVALID_VALUE;
    return emu::launch(fn->name.c_str(), fn->fn, {gx, gy, gz}, {bx, by, bz}, smem, params);
}
CUresult cuGetErrorName(int e, const char** s) {
    *s = e == 0 ? "CUDA_SUCCESS" : e == 1 ? "CUDA_ERROR_INVALID_VALUE" : e == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : e == 500 ? "CUDA_ERROR_NOT_FOUND"
                                                                                                                       : "CUDA_ERROR_UNKNOWN";
    return OK;
}
CUresult cuGetErrorString(int e, const char** s) { return cuGetErrorName(e, s); }
CUresult cuPointerGetAttribute(void* data, int attr, CUdeviceptr) {
    if (attr == 2) *(int*)data = 2;  // memory type: device
    else *(int*)data = 0;
    return OK;
}
}
