# Hand-written functions, one per prologue shape the interceptor must survive (or refuse).
# Each returns a known value. Padding between functions is explicit (`PAD n` = n int3 bytes),
# so the table at the end gives the test exact symbol boundaries: {addr, size, next - addr}.
# Built by interceptor/tests/hooks.rs with `cc -shared -fPIC`.
        .intel_syntax noprefix

        .macro FN name
        .globl \name
        .type \name, @function
\name:
        .endm
        .macro END name
        .size \name, . - \name
.L\name\()_end:
        .endm
        .macro PAD n
        .fill \n, 1, 0xcc
        .endm

        .data
        .p2align 3
val103: .long 103
val104: .long 104
        .globl xc_use_avx
        .protected xc_use_avx
xc_use_avx: .long 0

        .bss
        .globl xc_hits
        .protected xc_hits
        .p2align 6
xc_hits: .zero 8 * 64
        .globl xc_func_ip
        .protected xc_func_ip
xc_func_ip: .zero 8 * 64

        .text
        .p2align 4
# --- the functions, in table order ------------------------------------------------------

FN f_push_rbp                   # push rbp; mov rbp, rsp
        push rbp
        mov rbp, rsp
        mov eax, 101
        pop rbp
        ret
END f_push_rbp
        PAD 9

FN f_endbr                      # endbr64 first
        endbr64
        mov eax, 102
        ret
END f_endbr
        PAD 7

FN f_riprel                     # RIP-relative load in the first 5 bytes
        mov eax, DWORD PTR [rip + val103]
        ret
END f_riprel
        PAD 9

FN f_lea                        # RIP-relative lea
        lea rax, [rip + val104]
        mov eax, DWORD PTR [rax]
        ret
END f_lea
        PAD 6

FN f_jmp8                       # jmp rel8 first, dead bytes after it
        .byte 0xeb, 4
        PAD 4
        mov eax, 105
        ret
END f_jmp8
        PAD 4

FN f_jmp32                      # jmp rel32 first
        .byte 0xe9
        .long .Lj32 - . - 4
        int3
.Lj32:  mov eax, 106
        ret
END f_jmp32
        PAD 3

FN f_jcc8                       # jcc rel8 in the prologue: 107 if edi != 0 else 1107
        test edi, edi
        je .Ljcc
        mov eax, 107
        ret
.Ljcc:  mov eax, 1107
        ret
END f_jcc8
        PAD 5

FN f_loop                       # loop in the prologue: 108 if edi == 1 else 1108
        mov ecx, edi
        loop .Lloop
        mov eax, 108
        ret
.Lloop: mov eax, 1108
        ret
END f_loop
        PAD 5

FN f_jrcxz                      # jrcxz in the prologue: 1109 if rdi == 0 else 109
        mov rcx, rdi
        jrcxz .Ljrcxz
        mov eax, 109
        ret
.Ljrcxz: mov eax, 1109
        ret
END f_jrcxz
        PAD 3

FN f_call                       # a call in the first 5 bytes: 110
        call xc_helper
        add eax, 1
        ret
END f_call
        PAD 7

FN f_ret1                       # 1-byte function with padding after it
        ret
END f_ret1
        PAD 15

FN f_ret1_nopad                 # 1-byte function, next symbol right after: refused
        ret
END f_ret1_nopad

FN f_three                      # 3-byte function (returns its argument), 2 bytes of padding
        mov eax, edi
        ret
END f_three
        PAD 2

FN f_hop                        # loop back to offset 2: only the 2-byte hop fits
        xor eax, eax
.Lhop:  inc eax
        cmp eax, edi
        jl .Lhop
        ret
END f_hop
        PAD 12

FN f_backjump                   # jump back to offset 1: refused (branch into the patch)
        nop
.Lback: sub edi, 1
        jnz .Lback
        mov eax, 114
        ret
END f_backjump
        PAD 6

FN f_regs                       # (flags & OSZAPC) + r14 + r15, flags read before any write
        pushfq
        pop rax
        and eax, 0x8d5
        add rax, r14
        add rax, r15
        ret
END f_regs
        PAD 1

FN f_doubles                    # xmm0 + ... + xmm7
        addsd xmm0, xmm1
        addsd xmm0, xmm2
        addsd xmm0, xmm3
        addsd xmm0, xmm4
        addsd xmm0, xmm5
        addsd xmm0, xmm6
        addsd xmm0, xmm7
        ret
END f_doubles
        PAD 2

FN f_avx                        # ymm0 + ... + ymm7 (4 doubles each)
        vaddpd ymm0, ymm0, ymm1
        vaddpd ymm0, ymm0, ymm2
        vaddpd ymm0, ymm0, ymm3
        vaddpd ymm0, ymm0, ymm4
        vaddpd ymm0, ymm0, ymm5
        vaddpd ymm0, ymm0, ymm6
        vaddpd ymm0, ymm0, ymm7
        ret
END f_avx
        PAD 8

# --- not in the table: helpers ----------------------------------------------------------
.Lhelpers:
xc_helper:
        mov eax, 109
        ret

# u64 xc_call_regs(u64 r14, u64 r15, u64 rflags): calls f_regs with those values and a
# stack misaligned by 8 (the trampoline must align it itself).
FN xc_call_regs
        push r14
        push r15
        mov r14, rdi
        mov r15, rsi
        push rdx
        popfq
        call f_regs
        pop r15
        pop r14
        ret
END xc_call_regs

# void xc_call_avx(const double in[32], double out[4]): ymm0..7 = in, out = f_avx(...).
FN xc_call_avx
        vmovupd ymm0, [rdi]
        vmovupd ymm1, [rdi + 32]
        vmovupd ymm2, [rdi + 64]
        vmovupd ymm3, [rdi + 96]
        vmovupd ymm4, [rdi + 128]
        vmovupd ymm5, [rdi + 160]
        vmovupd ymm6, [rdi + 192]
        vmovupd ymm7, [rdi + 224]
        push rsi
        call f_avx
        pop rsi
        vmovupd [rsi], ymm0
        vzeroupper
        ret
END xc_call_avx

# Every general register a SysV callee may trash, trashed.
        .macro TRASH_GPRS
        mov rax, -1
        mov rcx, rax
        mov rdx, rax
        mov rsi, rax
        mov rdi, rax
        mov r8, rax
        mov r9, rax
        mov r10, rax
        mov r11, rax
        .endm

# u64 xc_probe_clobber(ProbeCtx *ctx): counts xc_hits[ctx->cookie], then trashes every
# register a SysV callee may trash: rax rcx rdx rsi rdi r8-r11, the flags, xmm/ymm0-15.
FN xc_probe_clobber
        mov rax, [rdi + 168]
        lea rcx, [rip + xc_hits]
        lock inc QWORD PTR [rcx + rax * 8]
        TRASH_GPRS
        pcmpeqd xmm0, xmm0
        pcmpeqd xmm1, xmm1
        pcmpeqd xmm2, xmm2
        pcmpeqd xmm3, xmm3
        pcmpeqd xmm4, xmm4
        pcmpeqd xmm5, xmm5
        pcmpeqd xmm6, xmm6
        pcmpeqd xmm7, xmm7
        pcmpeqd xmm8, xmm8
        pcmpeqd xmm9, xmm9
        pcmpeqd xmm10, xmm10
        pcmpeqd xmm11, xmm11
        pcmpeqd xmm12, xmm12
        pcmpeqd xmm13, xmm13
        pcmpeqd xmm14, xmm14
        pcmpeqd xmm15, xmm15
        cmp DWORD PTR [rip + xc_use_avx], 0
        je 1f
        vpcmpeqd ymm0, ymm0, ymm0
        vpcmpeqd ymm1, ymm1, ymm1
        vpcmpeqd ymm2, ymm2, ymm2
        vpcmpeqd ymm3, ymm3, ymm3
        vpcmpeqd ymm4, ymm4, ymm4
        vpcmpeqd ymm5, ymm5, ymm5
        vpcmpeqd ymm6, ymm6, ymm6
        vpcmpeqd ymm7, ymm7, ymm7
        vzeroupper
        vpcmpeqd ymm0, ymm0, ymm0
        vpcmpeqd ymm1, ymm1, ymm1
1:
        mov eax, 0x7f
        add al, 1                   # OF=1 SF=1, ZF=0 CF=0
        mov eax, 0x5555
        ret
END xc_probe_clobber

# u64 xc_probe_clobber_gpr(ProbeCtx *ctx): all a probe under the light trampoline body may
# do: reads only ctx->cookie and ctx->func_ip (counts xc_hits[cookie], keeps the address in
# xc_func_ip[cookie]), then trashes every general register and flag a SysV callee may
# trash, but no vector register (the JIT-ed probe keeps those itself).
FN xc_probe_clobber_gpr
        mov rax, [rdi + 168]
        mov rdx, [rdi + 176]
        lea rcx, [rip + xc_hits]
        lock inc QWORD PTR [rcx + rax * 8]
        lea rcx, [rip + xc_func_ip]
        mov [rcx + rax * 8], rdx
        TRASH_GPRS
        mov eax, 0x7f
        add al, 1                   # OF=1 SF=1, ZF=0 CF=0
        mov eax, 0x5555
        ret
END xc_probe_clobber_gpr

# --- the table ----------------------------------------------------------------------------
        .section .data.rel.ro, "aw"
        .p2align 3
        .macro ROW name, next
        .quad \name, .L\name\()_end - \name, \next - \name
        .endm
        .globl xc_table
xc_table:
        ROW f_push_rbp, f_endbr
        ROW f_endbr, f_riprel
        ROW f_riprel, f_lea
        ROW f_lea, f_jmp8
        ROW f_jmp8, f_jmp32
        ROW f_jmp32, f_jcc8
        ROW f_jcc8, f_loop
        ROW f_loop, f_jrcxz
        ROW f_jrcxz, f_call
        ROW f_call, f_ret1
        ROW f_ret1, f_ret1_nopad
        ROW f_ret1_nopad, f_three
        ROW f_three, f_hop
        ROW f_hop, f_backjump
        ROW f_backjump, f_regs
        ROW f_regs, f_doubles
        ROW f_doubles, f_avx
        ROW f_avx, .Lhelpers
        .globl xc_table_len
xc_table_len: .quad (xc_table_len - xc_table) / 24

        .section .note.GNU-stack, "", @progbits
