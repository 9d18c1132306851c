/*
 * pvh-dirty: the tiny PVH guest that dirties a working set, so that the Laundromat VMM and QEMU
 * can be compared on an identical guest.
 *
 * Boot: the PVH protocol (Xen's x86/HVM direct boot ABI). The loader finds the entry in the
 * XEN_ELFNOTE_PHYS32_ENTRY note and enters it in 32-bit protected mode with flat segments, paging
 * off, interrupts off, and EBX = the physical address of `struct hvm_start_info`.
 *
 * Behaviour:
 *  1. print "pvh-dirty: up" on the 16550 at I/O port 0x3f8;
 *  2. take the working-set size from an optional "wss=<MiB>" on the command line (default 64);
 *  3. forever: write the pass counter into the first word of every 4 KiB page of the working set
 *     (which starts at 2 MiB, above the image), then increment the counter; print "." after
 *     every 2^20 page writes (4 GiB), so the dots come at the same pace whatever the size.
 *
 * The code is 32-bit (.code32) in an ELF64 file: linux-loader, which the VMM uses, reads only
 * ELF64, and Linux's vmlinux carries its PVH entry the same way. QEMU takes either.
 */
    .intel_syntax noprefix

    .set COM1, 0x3f8                /* 16550 transmit holding register */
    .set COM1_LSR, COM1 + 5         /* line status register */
    .set LSR_THR_EMPTY, 0x20
    .set START_INFO_MAGIC, 0x336ec578
    .set START_INFO_CMDLINE, 24     /* hvm_start_info.cmdline_paddr (u64) */
    .set WSS_BASE, 0x200000         /* the working set starts at 2 MiB, above the image */
    .set WSS_DEFAULT_MIB, 64
    .set WSS_MAX_MIB, 4000          /* keeps WSS_BASE + wss below 4 GiB */
    .set PAGES_PER_MIB, 256
    .set PAGES_PER_DOT, 1 << 20

/* The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), a 32-bit entry address. */
    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         /* namesz, with the NUL */
    .long 4                         /* descsz */
    .long 18                        /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .code32
    .text
    .globl _start
_start:
    cld
    mov esp, offset stack_top
    mov ebp, ebx                    /* keep the start-info pointer */
    mov esi, offset msg_up
    call puts

    /* EAX = wss in MiB: from the command line if it has a usable "wss=", else the default. */
    xor eax, eax
    cmp dword ptr [ebp], START_INFO_MAGIC
    jne 1f
    cmp dword ptr [ebp + START_INFO_CMDLINE + 4], 0
    jne 1f                          /* a command line above 4 GiB is out of reach */
    mov esi, [ebp + START_INFO_CMDLINE]
    test esi, esi
    jz 1f
    call parse_wss
1:  test eax, eax
    jnz 2f
    mov eax, WSS_DEFAULT_MIB
2:  cmp eax, WSS_MAX_MIB
    jbe 3f
    mov eax, WSS_MAX_MIB
3:  mov ebx, eax
    mov esi, offset msg_wss
    call puts
    mov eax, ebx
    call putdec
    mov esi, offset msg_wss_end
    call puts

    /* EBX = pages per pass; EBP = passes per dot (at least 1); EDI = countdown to the next dot. */
    shl ebx, 8                      /* * PAGES_PER_MIB */
    mov eax, PAGES_PER_DOT
    xor edx, edx
    div ebx
    test eax, eax
    jnz 4f
    inc eax
4:  mov ebp, eax
    mov edi, eax
    xor eax, eax                    /* EAX = pass counter */

pass:
    mov edx, WSS_BASE
    mov ecx, ebx
5:  mov [edx], eax                  /* one 32-bit write per page dirties every page */
    add edx, 4096
    dec ecx
    jnz 5b
    inc eax
    dec edi
    jnz pass
    mov edi, ebp
    push eax
    mov al, '.'
    call putc
    pop eax
    jmp pass

/* parse_wss: ESI = NUL-terminated command line. Returns EAX = the number after a "wss=" that
 * starts a word, or 0 if there is none. Clobbers ECX, EDX, ESI. */
parse_wss:
    mov cl, ' '                     /* the previous character: the line starts a word */
6:  mov dl, [esi]
    test dl, dl
    jz 8f
    cmp cl, ' '
    jne 7f
    cmp dword ptr [esi], 0x3d737377 /* "wss=", little-endian */
    je 9f
7:  mov cl, dl
    inc esi
    jmp 6b
8:  xor eax, eax
    ret
9:  add esi, 4
    xor eax, eax
10: movzx edx, byte ptr [esi]
    sub edx, '0'
    cmp edx, 9
    ja 11f                          /* not a digit (unsigned compare) */
    cmp eax, 100000000
    jae 11f                         /* more digits could overflow; enough for the clamp */
    imul eax, eax, 10
    add eax, edx
    inc esi
    jmp 10b
11: ret

/* puts: ESI = NUL-terminated string. Clobbers EAX, EDX, ESI. */
puts:
    mov al, [esi]
    test al, al
    jz 12f
    call putc
    inc esi
    jmp puts
12: ret

/* putdec: prints EAX in decimal. Clobbers EAX, ECX, EDX. */
putdec:
    mov ecx, 10
    xor edx, edx
    div ecx
    push edx                        /* this digit; higher digits print first */
    test eax, eax
    jz 13f
    call putdec
13: pop eax
    add al, '0'
    jmp putc                        /* tail call */

/* putc: AL = byte to send. Waits for the transmitter, then writes it. Clobbers EDX. */
putc:
    push eax
    mov dx, COM1_LSR
14: in al, dx
    test al, LSR_THR_EMPTY
    jz 14b
    pop eax
    mov dx, COM1
    out dx, al
    ret

    .section .rodata
msg_up:      .asciz "pvh-dirty: up\r\n"
msg_wss:     .asciz "pvh-dirty: wss="
msg_wss_end: .asciz " MiB at 0x200000\r\n"

/* The stack is in .data, not .bss, so it is part of the loaded file: loaders that report the
 * image's end from file contents (linux-loader skips segments without file bytes) then do not
 * place boot data on top of it. */
    .data
    .balign 16
    .skip 4096
stack_top:
