/* An AVX2-only CPU for benchmarks, on a machine with AVX-512: preloaded into a process
 * (LD_PRELOAD), it makes the CPUID instruction trap (Linux's CPUID faulting,
 * arch_prctl(ARCH_SET_CPUID, 0); the CPU must list `cpuid_fault`) and answers every CPUID
 * itself with the real values minus AVX-512, AMX and AVX-VNNI. Every library that chooses its
 * kernels by CPUID (cnn and gemm through std's feature detection, PyTorch, oneDNN, ONNX
 * Runtime's MLAS) then runs its AVX2 + FMA code, as on an AMD Zen 2/3 or an older Intel core.
 * glibc reads CPUID before this library loads: set GLIBC_TUNABLES (see bench/README.md) so that
 * its string functions do not use AVX-512 either.
 *
 * Build: gcc -O2 -shared -fPIC -o hide_avx512.so hide_avx512.c
 * Check: LD_PRELOAD=./hide_avx512.so grep -c avx512 /proc/cpuinfo   (the kernel's view: still
 * there) against LD_PRELOAD=./hide_avx512.so target/release/cnn bench ... (kernels: avx2).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012

static void real_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

/* Bits cleared: leaf 7.0 EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31;
 * ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14; EDX: 4VNNIW 2, 4FMAPS 3,
 * VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23, AMX-TILE 24, AMX-INT8 25.
 * Leaf 7.1 EAX: AVX-VNNI 4, AVX512-BF16 5. */
static void mask(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (leaf == 7 && subleaf == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
                  (1u << 30) | (1u << 31));
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) |
                  (1u << 25));
    } else if (leaf == 7 && subleaf == 1) {
        r[0] &= ~((1u << 4) | (1u << 5));
    }
}

static void on_segv(int signal, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    (void)info;
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        /* A real crash: die of it. */
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigaction(signal, &dfl, NULL);
        return;
    }
    uint32_t leaf = (uint32_t)regs[REG_RAX], subleaf = (uint32_t)regs[REG_RCX], r[4];
    /* CPUID faulting is per thread: lift it for this one instruction. */
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, subleaf, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    mask(leaf, subleaf, r);
    regs[REG_RAX] = r[0];
    regs[REG_RBX] = r[1];
    regs[REG_RCX] = r[2];
    regs[REG_RDX] = r[3];
    regs[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, NULL) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "hide_avx512: CPUID faulting is not available here (no cpuid_fault)\n");
        exit(1);
    }
}
