/*
 * ksalloc.h -- the public ABI of ksalloc: the only header an allocator or a plugin needs.
 *
 * The seam is modelled on the Windows AVStream KSALLOCATOR_DISPATCH table (ks.h): four callbacks,
 * InitializeAllocator / DeleteAllocator / Allocate / Free, driven with a KSALLOCATOR_FRAMING that
 * says how many frames of what size and alignment the pin wants. Type names, flag values and
 * status codes keep their Windows spelling and values so that driver writers recognise them;
 * everything ksalloc adds (the pin object, shared heaps, the catalogue entry, the plugin symbol)
 * is prefixed ks_ / KSALLOC_.
 *
 * Contract the harness honours and its verifier checks (harness/verifier.h):
 *  - Frames == 0 or FrameSize == 0 mean "no requirement". InitializeAllocator may write the
 *    values it chose back into the framing it is handed; the harness reads them back and uses
 *    them from then on (a frame is then FrameSize bytes for all checks).
 *  - Every frame is at least FrameSize bytes and aligned to FileAlignment + 1 (FileAlignment is
 *    a mask: alignment - 1, so it must be 2^k - 1).
 *  - Allocate returns NULL, never aborts, when it cannot serve.
 *  - An allocator that promises capacity (KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE in the framing,
 *    or KS_CAP_GUARANTEED in its catalogue entry) hands out Frames frames before it may return
 *    NULL. One that says KS_CAP_BOUNDED never has more than Frames frames live.
 *  - DeleteAllocator releases everything the instance holds, even frames still live.
 *  - Without KS_CAP_THREAD_SAFE, the harness calls one instance from one thread at a time.
 *
 * Plugins: build a shared object that defines one ks_allocator_entry and exports it with
 * KSALLOC_PLUGIN(entry); load it with `ksalloc run --plugin path.so`. See README.md.
 */
#ifndef KSALLOC_H
#define KSALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Windows scalar types, as ks.h spells them ------------------------------------------- */

typedef void *PVOID;
typedef uint32_t ULONG;
typedef int32_t LONG;
typedef int32_t NTSTATUS;

/* NTSTATUS values with their ntstatus.h numbers. Severity lives in the top two bits:
 * success and informational are >= 0, warnings and errors are negative as LONG. */
#define STATUS_SUCCESS ((NTSTATUS)0x00000000L)
#define STATUS_NO_MORE_ENTRIES ((NTSTATUS)0x8000001AL)
#define STATUS_INVALID_PARAMETER ((NTSTATUS)0xC000000DL)
#define STATUS_INSUFFICIENT_RESOURCES ((NTSTATUS)0xC000009AL)
#define STATUS_NOT_SUPPORTED ((NTSTATUS)0xC00000BBL)
/* Used by the harness, also with their ntstatus.h values. */
#define STATUS_UNSUCCESSFUL ((NTSTATUS)0xC0000001L)
#define STATUS_DATA_ERROR ((NTSTATUS)0xC000003EL)
#define STATUS_INVALID_HANDLE ((NTSTATUS)0xC0000008L)
#define STATUS_REVISION_MISMATCH ((NTSTATUS)0xC0000059L)
#define STATUS_OBJECT_NAME_NOT_FOUND ((NTSTATUS)0xC0000034L)
#define STATUS_INVALID_IMAGE_FORMAT ((NTSTATUS)0xC000007BL)
#define STATUS_ENTRYPOINT_NOT_FOUND ((NTSTATUS)0xC0000139L)
#define STATUS_END_OF_FILE ((NTSTATUS)0xC0000011L)
#define STATUS_DEVICE_BUSY ((NTSTATUS)0x80000011L)

#define NT_SUCCESS(status) ((NTSTATUS)(status) >= 0)

/* ---- KSALLOCATOR_FRAMING ------------------------------------------------------------------- */

#define KSALLOCATOR_REQUIREMENTF_INPLACE_MODIFIER 0x00000001u
#define KSALLOCATOR_REQUIREMENTF_SYSTEM_MEMORY 0x00000002u
#define KSALLOCATOR_REQUIREMENTF_FRAME_INTEGRITY 0x00000004u
#define KSALLOCATOR_REQUIREMENTF_MUST_ALLOCATE 0x00000008u
#define KSALLOCATOR_REQUIREMENTF_PREFERENCES_ONLY 0x80000000u

#define KSALLOCATOR_OPTIONF_COMPATIBLE 0x00000001u
#define KSALLOCATOR_OPTIONF_SYSTEM_MEMORY 0x00000002u
#define KSALLOCATOR_OPTIONF_VALID 0x00000003u

/* FileAlignment is a mask: alignment in bytes minus one. */
#define FILE_BYTE_ALIGNMENT 0x00000000u
#define FILE_WORD_ALIGNMENT 0x00000001u
#define FILE_LONG_ALIGNMENT 0x00000003u
#define FILE_QUAD_ALIGNMENT 0x00000007u
#define FILE_OCTA_ALIGNMENT 0x0000000Fu
#define FILE_32_BYTE_ALIGNMENT 0x0000001Fu
#define FILE_64_BYTE_ALIGNMENT 0x0000003Fu
#define FILE_128_BYTE_ALIGNMENT 0x0000007Fu
#define FILE_256_BYTE_ALIGNMENT 0x000000FFu
#define FILE_512_BYTE_ALIGNMENT 0x000001FFu

/* The subset of wdm.h's POOL_TYPE a frame allocator meets. Paged memory may be paged out, so a
 * DMA adapter refuses to map it (a Driver Verifier DMA rule). */
typedef enum POOL_TYPE {
    NonPagedPool = 0,
    PagedPool = 1,
    NonPagedPoolCacheAligned = 4,
    NonPagedPoolNx = 512,
} POOL_TYPE;

typedef struct KSALLOCATOR_FRAMING {
    union {
        ULONG OptionsFlags;      /* KSALLOCATOR_OPTIONF_* */
        ULONG RequirementsFlags; /* KSALLOCATOR_REQUIREMENTF_* */
    };
    POOL_TYPE PoolType;
    ULONG Frames;    /* frames the pin wants available; 0 = no requirement */
    ULONG FrameSize; /* bytes per frame, prefix and postfix included; 0 = no requirement */
    union {
        ULONG FileAlignment; /* alignment - 1 */
        LONG FramePitch;
    };
    ULONG Reserved;
} KSALLOCATOR_FRAMING, *PKSALLOCATOR_FRAMING;

/* ---- The dispatch table -------------------------------------------------------------------- */

/* InitialContext is the pin (KSPIN *) the allocator serves. On success *Context is the
 * allocator's own state, the only thing the other three callbacks receive. */
typedef NTSTATUS (*PFNKSINITIALIZEALLOCATOR)(PVOID InitialContext, PKSALLOCATOR_FRAMING AllocatorFraming,
                                             PVOID *Context);
/* After it returns the instance is never used again; it releases all its resources. */
typedef void (*PFNKSDELETEALLOCATOR)(PVOID Context);
/* One frame, or NULL when the allocator cannot serve. Never aborts. */
typedef PVOID (*PFNKSDEFAULTALLOCATE)(PVOID Context);
/* Returns a frame that this instance handed out and that is live. */
typedef void (*PFNKSDEFAULTFREE)(PVOID Context, PVOID Buffer);

typedef struct KSALLOCATOR_DISPATCH {
    PFNKSINITIALIZEALLOCATOR InitializeAllocator;
    PFNKSDELETEALLOCATOR DeleteAllocator;
    PFNKSDEFAULTALLOCATE Allocate;
    PFNKSDEFAULTFREE Free;
} KSALLOCATOR_DISPATCH, *PKSALLOCATOR_DISPATCH;

/* ---- Shared backing heaps ------------------------------------------------------------------ */

typedef struct ks_heap ks_heap;

/* Creates the state that every instance of one allocator family on this heap shares (a TLSF
 * control block over [base, base + size_bytes), a jemalloc arena, ...). Called with the heap's
 * lock held: it must not call attach or detach itself. */
typedef NTSTATUS (*ks_heap_state_create_fn)(ks_heap *heap, void *arg, void **state);
typedef void (*ks_heap_state_destroy_fn)(ks_heap *heap, void *state);

/*
 * A heap the harness creates and hands to several pins so that their allocators draw from one
 * pool of memory (the "fragmenting" profile). base/size_bytes is a page-aligned region reserved
 * for allocators that carve memory themselves; general-purpose allocators may ignore it and
 * share an arena instead. Exactly one allocator family may manage a heap at a time.
 */
struct ks_heap {
    const char *name;
    void *base;
    size_t size_bytes;
    /* Joins the family's shared state, creating it on first attach. A heap already managed by
     * another family returns STATUS_INVALID_PARAMETER. Thread-safe. */
    NTSTATUS (*attach)(ks_heap *heap, const char *family, ks_heap_state_create_fn create, void *create_arg,
                       void **state);
    /* Leaves it; the last instance to leave destroys the state. Thread-safe. */
    void (*detach)(ks_heap *heap, const char *family, ks_heap_state_destroy_fn destroy);
    void *host_private; /* the harness's bookkeeping; allocators leave it alone */
};

/* ---- The pin: what InitializeAllocator receives as InitialContext ------------------------- */

struct ks_dma_adapter; /* harness/dma/, optional */

#define KSALLOC_ABI_VERSION 1u

/* In the spirit of PKSPIN: the harness's offer to the allocator serving this pin. */
typedef struct KSPIN {
    ULONG abi_version;                  /* KSALLOC_ABI_VERSION of the host */
    ULONG id;                           /* pin number within the run, from 0 */
    const char *name;                   /* "pin0", ... */
    KSALLOCATOR_FRAMING framing;        /* the framing the pin asked for */
    ks_heap *heap;                      /* shared backing heap, or NULL for a private one */
    struct ks_dma_adapter *dma_adapter; /* the device's DMA adapter, or NULL */
    void *host_private;                 /* the harness's bookkeeping; allocators leave it alone */
} KSPIN, *PKSPIN;

/* ---- Catalogue entries and plugins ---------------------------------------------------------- */

/* Capability bits an allocator states about itself; the verifier holds it to them. */
#define KS_CAP_THREAD_SAFE 0x0001u /* one instance may be called from many threads at once */
#define KS_CAP_BOUNDED 0x0002u     /* never more than Frames live (when Frames != 0) */
#define KS_CAP_GUARANTEED 0x0004u  /* serves Frames frames before it may return NULL */
#define KS_CAP_SHARED_HEAP 0x0008u /* draws from KSPIN.heap when the pin has one */
#define KS_CAP_DMA 0x0010u         /* frames come from KSPIN.dma_adapter, which it requires */
#define KS_CAP_ANY_SIZE 0x0020u    /* serves pins of different FrameSize from one shared heap */

/* A named counter an allocator reports about one instance (hits, misses, reserved_bytes...).
 * "reserved_bytes" (memory the instance holds from the OS or heap) is read by the benchmarks. */
typedef struct ks_counter {
    const char *name;
    uint64_t value;
} ks_counter;

/*
 * How a user of a general-purpose library calls it, with nothing kept per frame: aligned
 * allocation and a free that is told the size and alignment again (C23's free_aligned_sized
 * shape, so that a sized free such as jemalloc's sdallocx can be used). No instance and no
 * DeleteAllocator: whatever the caller does not free stays allocated. The benchmarks run such
 * a "bare" peer beside its KS-conformant instances, so the cost of the KS contract (a per-frame
 * record that lets DeleteAllocator release live frames, a refusal of foreign frees) reads as a
 * ratio. Both functions are thread-safe, and a frame may be freed by a thread other than the one
 * that allocated it.
 */
typedef struct ks_bare_ops {
    /* frame_bytes >= 1 bytes aligned to align_bytes (a power of two, at most the entry's
     * max_align_bytes); NULL when the library cannot serve. */
    void *(*allocate)(size_t frame_bytes, size_t align_bytes);
    /* A frame from allocate, with the frame_bytes and align_bytes it was allocated with. */
    void (*free)(void *frame, size_t frame_bytes, size_t align_bytes);
} ks_bare_ops;

typedef struct ks_allocator_entry {
    ULONG abi_version;  /* KSALLOC_ABI_VERSION the entry was built against */
    ULONG struct_bytes; /* sizeof(ks_allocator_entry) as built, for forward compatibility */
    const char *name;   /* [A-Za-z0-9_-]+, unique in the catalogue */
    const char *description;  /* one line */
    ULONG caps;               /* KS_CAP_* */
    size_t max_frame_bytes;   /* largest FrameSize served; 0 = no limit */
    size_t max_align_bytes;   /* largest FileAlignment + 1 honoured; 0 = no limit */
    const KSALLOCATOR_DISPATCH *dispatch;
    /* Optional: internal consistency of one instance (cf. tlsf_check). Writes why it failed into
     * why[why_bytes] and returns an error status, or returns STATUS_SUCCESS. Not on a hot path.
     * The host calls it only while no other callback of that instance is running (the verifier
     * holds back other threads' calls of a thread-safe instance for it), so it may read the
     * instance's state without taking the allocator's own locks. */
    NTSTATUS (*self_check)(PVOID Context, char *why, size_t why_bytes);
    /* Optional: fills up to max_counters counters, returns how many it filled. */
    size_t (*counters)(PVOID Context, ks_counter *out, size_t max_counters);
    /* Optional (read only when struct_bytes covers it): how a user of the underlying library
     * calls it -- aligned allocation and free with nothing kept per frame (ks_bare_ops). NULL
     * for allocators that are not a general-purpose library. If set, both functions are set. */
    const ks_bare_ops *bare;
} ks_allocator_entry;

/* The symbol a plugin exports: returns its entry for a host of ABI version host_abi_version. */
#define KSALLOC_PLUGIN_SYMBOL "ksalloc_plugin_entry"
typedef const ks_allocator_entry *(*ks_plugin_entry_fn)(ULONG host_abi_version);

#define KSALLOC_PLUGIN(entry_variable)                                                                  \
    __attribute__((visibility("default"))) const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi); \
    __attribute__((visibility("default"))) const ks_allocator_entry *ksalloc_plugin_entry(ULONG host_abi) \
    {                                                                                                   \
        (void)host_abi;                                                                                 \
        return &(entry_variable);                                                                       \
    }

/* Framing helpers every allocator needs. */
static inline size_t ks_framing_align_bytes(const KSALLOCATOR_FRAMING *framing)
{
    return (size_t)framing->FileAlignment + 1u;
}
static inline int ks_framing_align_valid(const KSALLOCATOR_FRAMING *framing)
{
    return (framing->FileAlignment & (framing->FileAlignment + 1u)) == 0u;
}

#ifdef __cplusplus
}
#endif
#endif /* KSALLOC_H */
