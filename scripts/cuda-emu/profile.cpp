// The memory-access profile of CUDA_EMU_PROFILE=1 builds (build.sh): the kernels are compiled with
// GCC's ThreadSanitizer instrumentation, whose per-access calls (__tsan_read4(addr), ...) land
// here instead of in the TSan runtime. Each access of a thread to global or shared memory is
// kept with its instruction (the call's return address); when the block's threads next stop (a
// barrier, a warp collective, an mbarrier), the accesses of each warp are matched up, the n-th
// access of one instruction in every lane forming one warp-wide request, as the hardware issues
// it when the warp runs in step. Then per request:
//   global: the 32-byte sectors it touches against the fewest that cover its bytes;
//   shared: the wavefronts it takes (per 4-byte bank, the distinct words asked of it; 8-byte
//           accesses in two half-warp phases, 16-byte ones in four quarter-warp phases) against
//           one per phase.
// At exit it writes, per kernel, the totals and the instructions that waste the most, as
// file:line of kernels/*.cu, to the file CUDA_EMU_PROFILE_OUT names (stderr if none).
// A model of the memory system's request counts, not a timing: no caches, no overlap.
// CUDA_EMU_PROFILE_DUMP=kernel prints the lanes' addresses of the first requests of each of its
// instructions to stderr.
#include "emu.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace emu {
bool in_fiber_stack(const void* p);  // emu.cpp: the running thread's own stack (its locals)
bool in_shared(const void* p);       // emu.cpp: the block's shared memory, static or dynamic
bool in_device_memory(const void* p);  // emu.cpp: a device allocation
uint32_t lane_count();               // emu.cpp: threads in the running block
const char* running_kernel();

struct Access {
    const void* pc;
    uintptr_t addr;
    uint32_t size;
    bool shared, write;
};
static std::vector<std::vector<Access>> per_thread;  // this round's accesses, by thread index
struct Site {
    uint64_t requests = 0, units = 0, ideal = 0;  // sectors or wavefronts, and their floor
    bool shared = false, write = false;
    uint32_t size = 0;
};
// An instruction and its kind (cp.async reads global and writes shared memory at one address).
static uintptr_t site_key(const Access& a) { return (uintptr_t)a.pc * 4 + a.shared * 2 + a.write; }
static const void* site_pc(uintptr_t key) { return (const void*)(key / 4); }
// kernel name -> instruction and kind -> totals
static std::map<std::string, std::unordered_map<uintptr_t, Site>> sites;

void profile_access(const void* p, uint32_t size, bool write, const void* pc, uint32_t thread) {
    if (in_fiber_stack(p)) return;
    const bool shared = in_shared(p);
    if (!shared && !in_device_memory(p)) return;  // the emulator's own state (threadIdx, the parameters)
    if (per_thread.size() <= thread) per_thread.resize(thread + 1);
    auto& acc = per_thread[thread];
    // g++ splits a 16-byte (uint4) or 8-byte load whose parts the kernel takes apart into 4- or
    // 8-byte pieces, maybe interleaved with another's: a piece that continues a recent access of
    // the same kind inside one aligned 16-byte block joins it, as the GPU's one wide access (not a
// piece of the same instruction: that is a loop's next element).
    const uintptr_t a = (uintptr_t)p;
    for (size_t i = acc.size(), seen = 0; i-- > 0 && seen < 8; ++seen) {
        Access& o = acc[i];
        if (o.pc != pc && o.shared == shared && o.write == write && o.addr + o.size == a && o.size + size <= 16 && o.addr / 16 == (a + size - 1) / 16) {
            o.size += size;
            return;
        }
    }
    acc.push_back({pc, a, size, shared, write});
}

// One warp-wide request: lanes' (address, size).
static void score(Site& s, const std::vector<std::pair<uintptr_t, uint32_t>>& lanes, const std::vector<uint32_t>& lane_ids) {
    s.requests++;
    if (!s.shared) {
        std::set<uintptr_t> sectors, bytes;
        for (auto [a, n] : lanes)
            for (uint32_t b = 0; b < n; ++b) sectors.insert((a + b) / 32), bytes.insert(a + b);
        s.units += sectors.size();
        s.ideal += (bytes.size() + 31) / 32;
        return;
    }
    // Phases: 32 lanes for accesses of up to 4 bytes, 16 for 8, 8 for 16.
    const uint32_t per_phase = s.size >= 16 ? 8 : s.size == 8 ? 16 : 32;
    std::map<uint32_t, std::map<uint32_t, std::set<uintptr_t>>> phase_bank_words;
    for (size_t i = 0; i < lanes.size(); ++i) {
        const auto [a, n] = lanes[i];
        for (uintptr_t w = a / 4; w <= (a + n - 1) / 4; ++w) phase_bank_words[lane_ids[i] / per_phase][(uint32_t)(w % 32)].insert(w);
    }
    for (auto& [phase, banks] : phase_bank_words) {
        size_t worst = 1;
        for (auto& [bank, words] : banks) worst = std::max(worst, words.size());
        s.units += worst;
        s.ideal += 1;
    }
}

// Matches up and scores the accesses each warp made since the last call.
void profile_flush() {
    auto& ks = sites[running_kernel()];
    const uint32_t n = std::min<uint32_t>(lane_count(), (uint32_t)per_thread.size());
    for (uint32_t w0 = 0; w0 < n; w0 += 32) {
        // (instruction and kind, occurrence) -> the lanes' accesses, in lane order
        std::map<std::pair<uintptr_t, uint32_t>, std::pair<std::vector<std::pair<uintptr_t, uint32_t>>, std::vector<uint32_t>>> reqs;
        std::map<std::pair<uintptr_t, uint32_t>, const Access*> first;
        for (uint32_t l = 0; l < 32 && w0 + l < n; ++l) {
            std::unordered_map<uintptr_t, uint32_t> seen;
            for (const Access& a : per_thread[w0 + l]) {
                const auto key = std::make_pair(site_key(a), seen[site_key(a)]++);
                auto& r = reqs[key];
                r.first.push_back({a.addr, a.size});
                r.second.push_back(l);
                first.emplace(key, &a);
            }
        }
        for (auto& [key, r] : reqs) {
            const Access& a = *first[key];
            Site& s = ks[key.first];
            s.shared = a.shared, s.write = a.write, s.size = std::max(s.size, a.size);
            static const char* dump = std::getenv("CUDA_EMU_PROFILE_DUMP");
            if (dump && std::string(dump) == running_kernel() && s.requests < 3) {
                std::fprintf(stderr, "request %p #%u:", site_pc(key.first), key.second);
                for (size_t i = 0; i < r.first.size(); ++i) std::fprintf(stderr, " %u:%lx+%u", r.second[i], (unsigned long)r.first[i].first, r.first[i].second);
                std::fprintf(stderr, "\n");
            }
            score(s, r.first, r.second);
        }
    }
    for (auto& v : per_thread) v.clear();
}

// file:line of each instruction, by addr2line on the library that holds it.
static std::map<const void*, std::string> where(const std::vector<const void*>& pcs) {
    std::map<const void*, std::string> out;
    std::map<std::string, std::vector<std::pair<const void*, uintptr_t>>> by_file;
    for (const void* pc : pcs) {
        Dl_info info;
        if (dladdr(pc, &info) && info.dli_fname) by_file[info.dli_fname].push_back({pc, (uintptr_t)pc - (uintptr_t)info.dli_fbase - 1});
    }
    for (auto& [file, list] : by_file) {
        // -i: the chain of inlined calls, innermost first; -a: each address before its lines.
        std::string cmd = "addr2line -a -i -e '" + file + "'";
        char buf[32];
        for (auto& [pc, off] : list) std::snprintf(buf, sizeof buf, " 0x%lx", (unsigned long)off), cmd += buf;
        FILE* p = popen(cmd.c_str(), "r");
        if (!p) continue;
        // Each address's innermost line in kernels/ (not emu.h's wrappers), else its first.
        char line[4096];
        size_t n = (size_t)-1;
        while (std::fgets(line, sizeof line, p)) {
            std::string s(line);
            while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
            if (s.rfind("0x", 0) == 0) {
                ++n;
                continue;
            }
            if (n >= list.size()) break;
            std::string& o = out[list[n].first];
            const size_t k = s.find("kernels/");
            if (k != std::string::npos && o.find("kernels/") == std::string::npos) o = s.substr(k);
            else if (o.empty()) o = s;
        }
        pclose(p);
    }
    return out;
}

static void report() {
    const char* path = std::getenv("CUDA_EMU_PROFILE_OUT");
    FILE* f = !path || std::string(path) == "-" ? stderr : std::fopen(path, "w");
    if (!f) return;
    std::vector<const void*> pcs;
    for (auto& [k, m] : sites)
        for (auto& [key, s] : m) pcs.push_back(site_pc(key));
    const auto loc = where(pcs);
    std::fprintf(f, "# cuda-emu memory profile: global sectors (and the fewest that cover the bytes), shared wavefronts (and one a phase)\n");
    for (auto& [k, m] : sites) {
        Site g, sh;
        for (auto& [key, s] : m) {
            Site& t = s.shared ? sh : g;
            t.requests += s.requests, t.units += s.units, t.ideal += s.ideal;
        }
        std::fprintf(f, "%s\n  global: %llu requests, %llu sectors, %llu needed (%.0f %%); shared: %llu requests, %llu wavefronts, %llu needed (%.0f %%)\n",
                     k.c_str(), (unsigned long long)g.requests, (unsigned long long)g.units, (unsigned long long)g.ideal,
                     g.units ? 100.0 * g.ideal / g.units : 100.0, (unsigned long long)sh.requests, (unsigned long long)sh.units,
                     (unsigned long long)sh.ideal, sh.units ? 100.0 * sh.ideal / sh.units : 100.0);
        std::vector<std::pair<const void*, const Site*>> worst;
        for (auto& [key, s] : m)
            if (s.units > s.ideal) worst.push_back({site_pc(key), &s});
        std::sort(worst.begin(), worst.end(), [](auto& a, auto& b) { return a.second->units - a.second->ideal > b.second->units - b.second->ideal; });
        for (size_t i = 0; i < worst.size() && i < 6; ++i) {
            const Site& s = *worst[i].second;
            auto it = loc.find(worst[i].first);
            std::fprintf(f, "    %-6s %-5s %2u B  %8.2f %s a request (%.2f needed)  %s\n", s.shared ? "shared" : "global", s.write ? "store" : "load", s.size,
                         (double)s.units / s.requests, s.shared ? "wavefronts" : "sectors", (double)s.ideal / s.requests,
                         it == loc.end() ? "?" : it->second.c_str());
        }
    }
    if (f != stderr) std::fclose(f);
}
static const int registered = std::atexit(report);
}  // namespace emu

// The instrumentation's entry points (GCC -fsanitize=thread).
#define EMU_TSAN(N)                                                                                                       \
    extern "C" void __tsan_read##N(void* p) { emu_profile_access(p, N, false, __builtin_return_address(0)); }               \
    extern "C" void __tsan_write##N(void* p) { emu_profile_access(p, N, true, __builtin_return_address(0)); }               \
    extern "C" void __tsan_unaligned_read##N(void* p) { emu_profile_access(p, N, false, __builtin_return_address(0)); }     \
    extern "C" void __tsan_unaligned_write##N(void* p) { emu_profile_access(p, N, true, __builtin_return_address(0)); }     \
    extern "C" void __tsan_volatile_read##N(void* p) { emu_profile_access(p, N, false, __builtin_return_address(0)); }      \
    extern "C" void __tsan_volatile_write##N(void* p) { emu_profile_access(p, N, true, __builtin_return_address(0)); }
void emu_profile_access(const void* p, uint32_t size, bool write, const void* pc);
EMU_TSAN(1)
EMU_TSAN(2)
EMU_TSAN(4)
EMU_TSAN(8)
EMU_TSAN(16)
extern "C" void __tsan_read_range(void*, unsigned long) {}
extern "C" void __tsan_write_range(void*, unsigned long) {}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
