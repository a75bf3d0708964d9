// A stand-in libcuda.so.1 that runs ffkern's sm_80 kernels on the CPU: the driver API calls that
// cudarc makes (device, context, streams and events, memory, modules, launches) over host memory,
// and each launch run block by block, a block's threads as fibers (see emu.h). Kernels are
// looked up by name among the kernel files compiled into this library; PTX is not read. Every
// call is synchronous, so streams and events only keep order trivially. It reports compute
// capability 8.0, or with CUDA_EMU_SM=90 9.0, where the launchers take the Hopper (sm_90a)
// kernels: wgmma, tensor-memory copies and mbarriers as emu.h describes them.
#include "emu.h"

#include <sys/mman.h>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include <algorithm>
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

enum State { RUNNABLE, WAIT_BAR, WAIT_COLL, WAIT_MBAR, WAIT_NBAR, WAIT_REG, DONE };
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
    uint32_t wait_on = 0, wait_arg = 0;     // WAIT_MBAR: barrier, parity; WAIT_NBAR: id, threads; WAIT_REG: registers
    uint32_t regs = 0;                      // this thread's registers (setmaxnreg)
    struct Wgmma {
        float* d;
        uint32_t n;
        uint64_t da, db;
        WgmmaType type;
    };
    std::vector<std::vector<Wgmma>> wg_groups;  // committed wgmma groups, oldest first
    std::vector<Wgmma> wg_open;
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
#if defined(EMU_PROFILE)
// profile.cpp's hooks and what it asks of the running block.
void profile_access(const void* p, uint32_t size, bool write, const void* pc, uint32_t thread);
void profile_flush();
bool in_device_memory(const void* p);
static uint32_t thread_index() { return (uint32_t)(&me() - fibers.data()); }
static uint32_t block_threads = 0;
bool in_fiber_stack(const void* p) { return (uintptr_t)p - (uintptr_t)me().stack < STACK; }
uint32_t lane_count() { return block_threads; }
const char* running_kernel() { return kernel_name; }
void note_shared_read(const void* p, uint32_t size) { profile_access(p, size, false, __builtin_return_address(0), thread_index()); }
#else
void note_shared_read(const void*, uint32_t) {}
#endif
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
#if defined(EMU_PROFILE)
    if (src_bytes > 0) profile_access(src, 16, false, __builtin_return_address(0), thread_index());
    profile_access(dst, 16, true, __builtin_return_address(0), thread_index());
#endif
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

// ---- Hopper ----
// The block's dynamic shared memory: `window` is 1024-byte aligned and dyn_smem starts 128 bytes
// into it (as after a little static shared memory), so a kernel that needs its swizzled tiles
// 1024-byte aligned must align them itself.
static unsigned char* window = nullptr;
static uint32_t window_bytes = 0;
constexpr uint32_t NOT_SHARED = ~0u;
// p's 32-bit shared address, or NOT_SHARED where p is not in the block's shared memory.
static uint32_t shared_offset(const void* p) {
    const auto* q = static_cast<const unsigned char*>(p);
    if (q >= window && q < window + window_bytes) return (uint32_t)(q - window);
    if (kernel && q >= kernel->shared.begin && q < kernel->shared.end) return STATIC_SMEM + (uint32_t)(q - kernel->shared.begin);
    return NOT_SHARED;
}
uint32_t smem_addr(const void* p) {
    const uint32_t a = shared_offset(p);
    if (a == NOT_SHARED) trap("a shared-memory address of memory that is not shared");
    return a;
}
#if defined(EMU_PROFILE)
bool in_shared(const void* p) { return shared_offset(p) != NOT_SHARED; }
#endif
static unsigned char* smem_ptr(uint32_t a, uint32_t bytes) {
    if (a < window_bytes && bytes <= window_bytes - a) return window + a;
    const size_t st = kernel ? (size_t)(kernel->shared.end - kernel->shared.begin) : 0;
    if (a >= STATIC_SMEM && a - STATIC_SMEM < st && bytes <= st - (a - STATIC_SMEM)) return kernel->shared.begin + (a - STATIC_SMEM);
    trap("a shared-memory access outside the block's shared memory");
}

struct Mbar {
    uint32_t expected, pending, phase;
    int64_t tx;
};
static std::unordered_map<uint32_t, Mbar> mbars;
static Mbar& mbar_at(uint32_t bar) {
    auto it = mbars.find(bar);
    if (it == mbars.end()) trap("mbarrier used before mbarrier.init");
    return it->second;
}
// Completes the phase when nothing is outstanding, releasing the threads that wait on it.
static void mbar_settle(uint32_t bar, Mbar& m) {
    if (m.pending != 0 || m.tx != 0) return;
    for (Fiber& f : fibers)
        if (f.state == WAIT_MBAR && f.wait_on == bar && f.wait_arg == (m.phase & 1)) f.state = RUNNABLE;
    m.phase ^= 1;
    m.pending = m.expected;
}
void mbar_init(uint32_t bar, uint32_t count) {
    if (bar % 8) trap("mbarrier not 8-byte aligned");
    if (count == 0) trap("mbarrier.init with count 0");
    smem_ptr(bar, 8);
    mbars[bar] = {count, count, 0, 0};
}
void mbar_arrive(uint32_t bar, uint32_t expect_tx_bytes) {
    Mbar& m = mbar_at(bar);
    if (m.pending == 0) trap("mbarrier arrival past its expected count");
    m.tx += expect_tx_bytes;
    --m.pending;
    mbar_settle(bar, m);
}
bool mbar_wait(uint32_t bar, uint32_t parity) {
    Mbar& m = mbar_at(bar);
    if ((m.phase & 1) != (parity & 1)) return true;  // that phase has completed
    Fiber& f = me();
    f.wait_on = bar, f.wait_arg = parity & 1;
    yield_as(WAIT_MBAR);
    return true;
}
void named_barrier(uint32_t id, uint32_t threads) {
    if (id >= 16 || threads == 0 || threads % 32) trap("bar.sync with a bad barrier or thread count");
    Fiber& f = me();
    f.wait_on = id, f.wait_arg = threads;
    yield_as(WAIT_NBAR);
}
// The block's registers that no thread holds (setmaxnreg.dec returns them, .inc takes them).
static uint64_t regs_free = 0;
void setmaxnreg(uint32_t regs, bool inc) {
    Fiber& f = me();
    if (regs < 24 || regs > 256 || regs % 8) trap("setmaxnreg outside 24..256 or not a multiple of 8");
    if (inc ? regs < f.regs : regs > f.regs) trap(inc ? "setmaxnreg.inc below the thread's registers" : "setmaxnreg.dec above the thread's registers");
    if (!inc) {
        regs_free += f.regs - regs;
        f.regs = regs;
        return;
    }
    f.wait_arg = regs;
    yield_as(WAIT_REG);
}
// Gives each thread blocked in setmaxnreg.inc its registers while the pool holds them.
static bool release_regs(uint32_t nthreads) {
    bool progress = false;
    for (uint32_t i = 0; i < nthreads; ++i) {
        Fiber& f = fibers[i];
        if (f.state != WAIT_REG || regs_free < f.wait_arg - f.regs) continue;
        regs_free -= f.wait_arg - f.regs;
        f.regs = f.wait_arg;
        f.state = RUNNABLE;
        progress = true;
    }
    return progress;
}

// What cuTensorMapEncodeTiled (below) writes into the driver's opaque 128 bytes.
struct TensorMap {
    uint64_t magic, addr;
    uint32_t rank, elsize, swizzle;
    uint32_t dims[5];
    uint64_t strides[4];  // bytes, dimensions 1 .. rank - 1
    uint16_t box[5];
};
static_assert(sizeof(TensorMap) <= 128, "fits a CUtensorMap");
constexpr uint64_t MAP_MAGIC = 0x70616d736e6574ull;
struct Bulk {
    uint32_t dst, bar;
    TensorMap map;
    int c[5];
};
static std::vector<Bulk> bulks;
void tma_load(uint32_t dst, const void* map, const int* coords, int rank, uint32_t bar) {
    Bulk b{dst, bar, {}, {}};
    std::memcpy(&b.map, map, sizeof(TensorMap));
    if (b.map.magic != MAP_MAGIC) trap("cp.async.bulk.tensor with a tensor map that cuTensorMapEncodeTiled did not write");
    if ((int)b.map.rank != rank) trap("cp.async.bulk.tensor of another rank than its tensor map's");
    if (dst % 128) trap("cp.async.bulk.tensor to shared memory not 128-byte aligned");
    mbar_at(bar);
    for (int i = 0; i < rank; ++i) b.c[i] = coords[i];
    bulks.push_back(b);
}
// Lands the queued tensor copies: the box, zero past the tensor's edges, into shared memory in
// the map's swizzle (16-byte chunk j of a 128-byte row at j ^ (address bits 7..9) for 128 bytes),
// then its bytes counted on the barrier.
static bool land_bulks() {
    if (bulks.empty()) return false;
    std::vector<Bulk> now;
    now.swap(bulks);
    for (const Bulk& b : now) {
        const TensorMap& m = b.map;
        uint64_t total = 1;
        for (uint32_t i = 0; i < m.rank; ++i) total *= m.box[i];
        const uint32_t bytes = (uint32_t)(total * m.elsize);
        unsigned char* dst = smem_ptr(b.dst, bytes);
        const uint32_t sw = m.swizzle == 3 ? 7 : m.swizzle == 2 ? 3 : m.swizzle == 1 ? 1 : 0;
        for (uint64_t e = 0; e < total; ++e) {
            uint64_t rest = e, off = 0;
            bool inside = true;
            for (uint32_t i = 0; i < m.rank; ++i) {
                const int64_t g = (int64_t)b.c[i] + (int64_t)(rest % m.box[i]);
                rest /= m.box[i];
                inside &= g >= 0 && g < (int64_t)m.dims[i];
                off += i == 0 ? (uint64_t)g * m.elsize : (uint64_t)g * m.strides[i - 1];
            }
            uint32_t a = b.dst + (uint32_t)(e * m.elsize);
            a ^= ((a >> 7) & sw) << 4;
            unsigned char* out = dst + (a - b.dst);
            if (inside) std::memcpy(out, (const unsigned char*)(uintptr_t)m.addr + off, m.elsize);
            else std::memset(out, 0, m.elsize);
        }
        Mbar& bar = mbar_at(b.bar);
        bar.tx -= bytes;
        mbar_settle(b.bar, bar);
    }
    return true;
}

void wgmma(float* d, uint32_t n, uint64_t desc_a, uint64_t desc_b, WgmmaType type) { me().wg_open.push_back({d, n, desc_a, desc_b, type}); }
void wgmma_commit() {
    Fiber& f = me();
    f.wg_groups.push_back(std::move(f.wg_open));
    f.wg_open.clear();
}
// Element (row, k) of a K-major operand: 8-row atoms `stride` bytes apart (the descriptor's
// stride byte offset), 128-byte rows, the 128-byte swizzle by address bits.
static float operand(uint64_t desc, uint32_t row, uint32_t k, WgmmaType type) {
    if (desc >> 62 != 1) trap("wgmma descriptor: only the 128-byte swizzle is emulated");
    const uint32_t start = (uint32_t)(desc & 0x3fff) << 4, stride = (uint32_t)((desc >> 32) & 0x3fff) << 4;
    uint32_t a = start + (row / 8) * stride + (row % 8) * 128 + k * 2;
    a ^= ((a >> 7) & 7) << 4;
    uint16_t h;
    std::memcpy(&h, smem_ptr(a, 2), 2);
    return type == WG_F16 ? __half2float(__half{h}) : __bfloat162float(__nv_bfloat16{h});
}
// This thread's accumulators of m64nNk16: warp w of the warpgroup holds rows 16w + lane/4 (+ 8),
// columns 8j + 2(lane mod 4) (+ 1) in d[4j .. 4j + 3].
static void run_wgmma(const Fiber::Wgmma& op, uint32_t t) {
    const uint32_t w = (t % 128) / 32, l = t % 32, r0 = 16 * w + l / 4;
    float A[2][16], B[2][16];
    for (uint32_t k = 0; k < 16; ++k) A[0][k] = operand(op.da, r0, k, op.type), A[1][k] = operand(op.da, r0 + 8, k, op.type);
    for (uint32_t j = 0; j < op.n / 8; ++j) {
        const uint32_t c0 = 8 * j + 2 * (l % 4);
        for (uint32_t k = 0; k < 16; ++k) B[0][k] = operand(op.db, c0, k, op.type), B[1][k] = operand(op.db, c0 + 1, k, op.type);
        for (int i = 0; i < 4; ++i) {
            double s = 0;
            for (uint32_t k = 0; k < 16; ++k) s += (double)A[i / 2][k] * B[i % 2][k];
            op.d[4 * j + i] = (float)(op.d[4 * j + i] + s);
        }
    }
}
void wgmma_wait(int pending) {
    Fiber& f = me();
    while ((int)f.wg_groups.size() > pending) {
        for (const Fiber::Wgmma& op : f.wg_groups.front()) run_wgmma(op, f.tid.x);
        f.wg_groups.erase(f.wg_groups.begin());
    }
}

// Releases the threads at a named barrier once as many have arrived as it counts.
static bool release_named(uint32_t nthreads) {
    bool progress = false;
    for (uint32_t id = 0; id < 16; ++id) {
        uint32_t at = 0, count = 0;
        for (uint32_t i = 0; i < nthreads; ++i)
            if (fibers[i].state == WAIT_NBAR && fibers[i].wait_on == id) {
                if (count && fibers[i].wait_arg != count) trap("bar.sync with different thread counts for one barrier");
                count = fibers[i].wait_arg, ++at;
            }
        if (at == 0 || at < count) continue;
        if (at > count) trap("more threads at a named barrier than it counts");
        for (uint32_t i = 0; i < nthreads; ++i)
            if (fibers[i].state == WAIT_NBAR && fibers[i].wait_on == id) fibers[i].state = RUNNABLE;
        progress = true;
    }
    return progress;
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
        f.wg_groups.clear();
        f.wg_open.clear();
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
    mbars.clear();
    bulks.clear();
    // The registers each thread starts with: __launch_bounds__(nthreads, 1)'s most.
    const uint32_t start_regs = std::min<uint32_t>(255, 65536 / (32 * ((nthreads + 31) / 32)) / 8 * 8);
    for (uint32_t i = 0; i < nthreads; ++i) fibers[i].regs = start_regs;
    regs_free = 0;
#if defined(EMU_PROFILE)
    block_threads = nthreads;
#endif
    const uint32_t warps = (nthreads + 31) / 32;
    for (;;) {
        for (uint32_t n = 0; n < nthreads; ++n) {
            const uint32_t i = reverse ? nthreads - 1 - n : n;
            if (fibers[i].state != RUNNABLE) continue;
            cur = &fibers[i];
            emu_switch(&sched_sp, fibers[i].sp);
            cur = nullptr;
        }
#if defined(EMU_PROFILE)
        profile_flush();
#endif
        bool all_done = true, all_bar = true, progress = false;
        for (uint32_t i = 0; i < nthreads; ++i) {
            all_done &= fibers[i].state == DONE;
            all_bar &= fibers[i].state == DONE || fibers[i].state == WAIT_BAR;
        }
        if (all_done) return;
        progress |= land_bulks();
        progress |= release_named(nthreads);
        progress |= release_regs(nthreads);
        for (uint32_t i = 0; i < nthreads; ++i) progress |= fibers[i].state == RUNNABLE;  // released by an mbarrier
        for (uint32_t w = 0; w < warps; ++w) progress |= resolve_warp(w, nthreads, false);
        if (progress) continue;
        if (all_bar) {
            for (uint32_t i = 0; i < nthreads; ++i)
                if (fibers[i].state == WAIT_BAR) fibers[i].state = RUNNABLE;
            continue;
        }
        for (uint32_t w = 0; w < warps; ++w) progress |= resolve_warp(w, nthreads, true);
        if (progress) continue;
        uint32_t bar = 0, coll = 0, mbar = 0, named = 0, reg = 0;
        for (uint32_t i = 0; i < nthreads; ++i) {
            const State s = fibers[i].state;
            bar += s == WAIT_BAR, coll += s == WAIT_COLL, mbar += s == WAIT_MBAR, named += s == WAIT_NBAR, reg += s == WAIT_REG;
        }
        cur = nullptr;
        std::fprintf(stderr,
                     "cuda-emu: deadlock in %s block (%u,%u,%u): %u threads at __syncthreads, %u at a warp collective, %u at an mbarrier, %u at a "
                     "named barrier, %u at setmaxnreg.inc (%llu registers free)\n",
                     kernel_name, block_idx.x, block_idx.y, block_idx.z, bar, coll, mbar, named, reg, (unsigned long long)regs_free);
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
// CUDA_EMU_TRACE=1: each launch's kernel, grid, block and dynamic shared memory on stderr.
static const bool trace = std::getenv("CUDA_EMU_TRACE") != nullptr;
int launch(const char* name, const Kernel* k, dim3 grid, dim3 block, uint32_t smem, void** params) {
    std::lock_guard<std::mutex> g(launch_lock);
    if (trace) std::fprintf(stderr, "cuda-emu: %s <<<(%u,%u,%u), (%u,%u,%u), %u>>>\n", name, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
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
    std::vector<unsigned char> dyn(smem + 128 + 1024);
    window = (unsigned char*)(((uintptr_t)dyn.data() + 1023) & ~(uintptr_t)1023);
    window_bytes = smem + 128;
    dyn_smem = window + 128;
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
    dyn_smem = window = nullptr;
    window_bytes = 0;
    return 0;
}
}  // namespace emu

// ---- the driver API ----
using CUresult = int;
using CUdeviceptr = unsigned long long;
enum : int { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_FOUND = 500, NOT_SUPPORTED = 801 };

static std::mutex mem_lock;
static std::map<uintptr_t, size_t> sizes;  // the allocations, by address
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
#if defined(EMU_PROFILE)
// Whether p lies in a device allocation (for the memory profile: global memory, as against the
// emulator's own state that the kernels' threadIdx and blockIdx read).
bool emu::in_device_memory(const void* p) {
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = sizes.upper_bound((uintptr_t)p);
    if (it == sizes.begin()) return false;
    --it;
    return (uintptr_t)p - it->first < it->second;
}
#endif
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
// CUDA_EMU_SM=90: a Hopper (compute capability 9.0, 227 KiB of shared memory a block).
static const bool hopper = [] {
    const char* s = std::getenv("CUDA_EMU_SM");
    return s && std::string(s) == "90";
}();
static const int max_block_smem = hopper ? 232448 : 166912;

extern "C" {
CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { return *v = 13000, OK; }
CUresult cuDeviceGetCount(int* n) { return *n = 1, OK; }
CUresult cuDeviceGet(int* d, int ordinal) { return ordinal == 0 ? (*d = 0, OK) : INVALID_VALUE; }
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, hopper ? "cuda-emu (CPU, sm_90)" : "cuda-emu (CPU, sm_80)");
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
    case 75: *v = hopper ? 9 : 8; break;     // compute capability major
    case 76: *v = 0; break;                  // minor
    case 81: *v = max_block_smem + 1024; break;  // shared memory per multiprocessor
    case 82: *v = 65536; break;              // registers per multiprocessor
    case 97: *v = max_block_smem; break;     // max shared memory per block, opt-in
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
        if (v < 0 || v > max_block_smem) return INVALID_VALUE;
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
// The checks the driver makes of a tiled map that the kernels' maps could fail: a 16-byte aligned
// address, strides that are multiples of 16 bytes, boxes of at most 256 elements a dimension
// whose inner extent fits the swizzle span, unit element strides (all that tma_load copies).
CUresult cuTensorMapEncodeTiled(CUtensorMap* map, int type, uint32_t rank, void* addr, const uint64_t* dims, const uint64_t* strides,
                                const uint32_t* box, const uint32_t* elem_strides, int interleave, int swizzle, int, int oob_fill) {
    const uint32_t elsize = type == 0 ? 1 : type == 1 || type == 6 || type == 9 ? 2 : type == 2 || type == 3 || type == 7 ? 4 : 8;
    if (rank < 1 || rank > 5 || (uintptr_t)addr % 16 || interleave != 0 || oob_fill != 0 || swizzle < 0 || swizzle > 3) return INVALID_VALUE;
    emu::TensorMap m{emu::MAP_MAGIC, (uint64_t)(uintptr_t)addr, rank, elsize, (uint32_t)swizzle, {}, {}, {}};
    for (uint32_t i = 0; i < rank; ++i) {
        if (dims[i] == 0 || dims[i] > 0xffffffffull || box[i] == 0 || box[i] > 256 || elem_strides[i] != 1) return INVALID_VALUE;
        if (i > 0 && (strides[i - 1] % 16 || strides[i - 1] >= (1ull << 40))) return INVALID_VALUE;
        m.dims[i] = (uint32_t)dims[i], m.box[i] = (uint16_t)box[i];
        if (i > 0) m.strides[i - 1] = strides[i - 1];
    }
    if (swizzle != 0 && box[0] * elsize > (16u << swizzle)) return INVALID_VALUE;
    std::memset(map, 0, sizeof(CUtensorMap));
    std::memcpy(map, &m, sizeof m);
    return OK;
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

#if defined(EMU_PROFILE)
// A global or shared access of the running kernel's thread (profile.cpp's __tsan_* entries).
void emu_profile_access(const void* p, uint32_t size, bool write, const void* pc) {
    if (emu::cur) emu::profile_access(p, size, write, pc, emu::thread_index());
}
#endif
