; A guest's brute-force PCI scan over MMCONFIG (ECAM), Linux pci_scan_slot() style.
;
; In:  rdi = guest-physical address of the window's first bus (bus 0's config page 0)
;      esi = number of buses in the window (1..256)
; Out: rax = number of present functions (vendor ID != 0xffff); stops at the final hlt.
;
; For every bus and device: read the vendor/device dword at offset 0 of function 0. If
; vendor is 0xffff, the device is absent: functions 1..7 are skipped. Otherwise read the
; header type byte (offset 0x0e); only if its bit 7 (multifunction) is set are functions
; 1..7 probed, each by its vendor dword. Addresses: base + bus<<20 + dev<<15 + fn<<12.
; Clobbers rbx, rcx, rdx, r8..r11.

    xor eax, eax
    xor r8d, r8d                ; bus
bus_loop:
    cmp r8d, esi
    jae done
    xor r9d, r9d                ; device
dev_loop:
    mov rbx, r8
    shl rbx, 20
    mov rcx, r9
    shl rcx, 15
    or rbx, rcx
    add rbx, rdi                ; rbx = config page of bus:dev.0
    mov edx, dword ptr [rbx]    ; vendor | device << 16
    cmp dx, 0xffff
    je next_dev                 ; no function 0: nothing in this slot
    inc rax
    movzx edx, byte ptr [rbx + 0x0e]
    test dl, 0x80
    jz next_dev                 ; single-function device
    mov r10d, 1                 ; function
fn_loop:
    mov r11, r10
    shl r11, 12
    add r11, rbx
    mov edx, dword ptr [r11]
    cmp dx, 0xffff
    je next_fn
    inc rax
next_fn:
    inc r10d
    cmp r10d, 8
    jb fn_loop
next_dev:
    inc r9d
    cmp r9d, 32
    jb dev_loop
    inc r8d
    jmp bus_loop
done:
    hlt
