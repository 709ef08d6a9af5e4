// The device MMU, shared by every device kernel (`//!include mmu.wgsl`): a kernel is only its body.
//
// The word kernels (devwrite, devread, checksum: an item per 4-byte word; mmu_words.wgsl is their
// main, the kernel its WORD_WRITE and word_body) work a page at a time: a workgroup takes the
// chunk's pages in turn (mmu_pages, mmu_page_begin), each invocation translates the page once for
// its share of the page's words, as a TLB entry serves a warp's accesses to a page, does them, and
// mmu_page_done stamps the page. A page that faults is recorded once, by invocation 0, counting its
// items that faulted (the raw count stays one per faulting word), and its words are left undone.
// The atomic kernel, whose items hop from page to page, translates every access with mmu_translate
// and stops with mmu_stop; its faults are recorded one per subgroup and page where the adapter has
// subgroups (a warp's faults coalesced as a GPU's TLB does), one per thread where it has not.
// mmu_end() ends every main.
//
// mmu_translate(page, write, thread): with permission it returns the frame (setting the PTE's
// DIRTY bit on the first store). Without, it records a fault in the fault buffer, as replayable-
// fault hardware does, and the work must be left undone; the invocation goes on to its next work,
// so one launch collects the faults of all the work. The host services the faults and replays the
// unfinished work. A PTE whose FAIL bit is set for the access means the host refused that access
// (EFAULT): the work is marked failed, not retried.
//
// Bindings (group 0) are the same for every kernel (one explicit layout, src/device/kernels.ts).

struct Params {
  first_page: u32, // the chunk's first page: counts[0] and, for the word kernels, the page of item 0
  first_word: u32, // words from the start of first_page to item 0's word (atomic: to the range's word 0)
  items: u32, // work items of this chunk (words, or logical threads for the atomic kernel)
  threads: u32, // invocations dispatched: work is grid-strided over them
  page_words: u32, // words in a page (page size / 4)
  frames_per_buf: u32, // frames in each frame buffer (frames.wgsl)
  pattern_base: u32, // devwrite: (file offset of item 0 + 7 * tag) mod 251
  k: u32, // atomic: increments per logical thread
  nwords: u32, // atomic: words the increments cycle over
  pte_base: u32, // page of pte[0]: the launch binds a window of the page table
  pte_pages: u32, // pages in that window
  fault_cap: u32, // fault buffer: entries it holds
  counts_base: u32, // fault buffer: word where the per-page raw fault counts (from first_page) start
  spread: u32, // atomic: logical thread i starts at word i * spread
  launch: u32, // this launch's stamp, 1 for the chunk's first: the progress record's "done by"
  item_base: u32, // atomic: the logical thread of item 0
  range_page: u32, // atomic: the page of the range's word 0
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> pte: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read_write> faults: array<atomic<u32>>;
// The unfinished-work record, one slot per page of the chunk (word kernels) or per logical thread
// (atomic): a u32 per page rather than per word keeps it 1/1024 of the work.
@group(0) @binding(3) var<storage, read_write> progress: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<atomic<u32>>;

// PTE bits: src/device/pte.ts.
const PTE_READ: u32 = 0x80000000u;
const PTE_WRITE: u32 = 0x40000000u;
const PTE_DIRTY: u32 = 0x20000000u;
const PTE_FAIL_READ: u32 = 0x10000000u;
const PTE_FAIL_WRITE: u32 = 0x08000000u;
const PTE_FRAME_MASK: u32 = 0x07ffffffu;

// Fault buffer header: src/device/fault.ts.
const F_UNIQUE: u32 = 0u;
const F_RAW: u32 = 1u;
const F_OVERFLOW: u32 = 2u;
const F_ENTRIES: u32 = 4u;

// Progress of a logical thread of the atomic kernel: refused (> any count: replays skip it).
const WORK_FAILED: u32 = 0x80000000u;

const T_OK: u32 = 0u;
const T_FAULT: u32 = 1u;
const T_FAIL: u32 = 2u;

struct Translation {
  status: u32,
  frame: u32,
}

// This invocation's raw faults, added to F_RAW once, at the end of main (mmu_end): one global
// atomic per invocation rather than one per faulting access. In a first launch every access
// faults, and every one of them adding to the one F_RAW word was a good part of the launch.
// (Measured on lavapipe; a workgroup-memory table for the per-page counters as well was no faster:
// its atomics cost as much as the global ones they replace.)
var<private> mmu_raw: u32;

// Record a fault. The per-page, per-access raw counter doubles as the pending bit: only the first
// to fault on (page, access) in this launch takes an entry, so ten thousand threads on one page are
// one fault to service, and the counter keeps how many there were.
fn mmu_record(page: u32, write: bool, thread: u32, slot_bit: u32, n: u32) {
  let before = atomicAdd(&faults[p.counts_base + slot_bit], n);
  if (before != 0u) {
    return;
  }
  let slot = atomicAdd(&faults[F_UNIQUE], 1u);
  if (slot >= p.fault_cap) {
    atomicAdd(&faults[F_OVERFLOW], 1u);
    return;
  }
  atomicStore(&faults[F_ENTRIES + slot * 2u], page | select(0u, 0x80000000u, write));
  atomicStore(&faults[F_ENTRIES + slot * 2u + 1u], thread);
}

//!if subgroups
// One record per subgroup and (page, access), as a GPU's TLB coalesces a warp's faults on a page:
// the subgroup's lanes that fault on the same (page, access) add their counts in one atomic, by an
// elected lane. The counts stay exact; lanes on another page loop to their own turn.
fn mmu_record_fault(page: u32, write: bool, thread: u32, n: u32) {
  mmu_raw += n;
  let key = (page - p.first_page) * 2u + select(0u, 1u, write);
  loop {
    if (subgroupBroadcastFirst(key) == key) {
      let count = subgroupAdd(n);
      if (subgroupElect()) {
        mmu_record(page, write, thread, key, count);
      }
      break;
    }
  }
}
//!else
fn mmu_record_fault(page: u32, write: bool, thread: u32, n: u32) {
  mmu_raw += n;
  mmu_record(page, write, thread, (page - p.first_page) * 2u + select(0u, 1u, write), n);
}
//!endif

// Translate `page` for `n` accesses (items): a fault counts n raw faults.
fn mmu_translate_n(page: u32, write: bool, thread: u32, n: u32) -> Translation {
  if (page < p.first_page || page - p.pte_base >= p.pte_pages) {
    return Translation(T_FAIL, 0u); // the host binds every page the chunk touches: never taken
  }
  let word = atomicLoad(&pte[page - p.pte_base]);
  let need = select(PTE_READ, PTE_WRITE, write);
  if ((word & need) != 0u) {
    if (write && (word & PTE_DIRTY) == 0u) {
      atomicOr(&pte[page - p.pte_base], PTE_DIRTY);
    }
    return Translation(T_OK, word & PTE_FRAME_MASK);
  }
  if ((word & select(PTE_FAIL_READ, PTE_FAIL_WRITE, write)) != 0u) {
    return Translation(T_FAIL, 0u);
  }
  mmu_record_fault(page, write, thread, n);
  return Translation(T_FAULT, 0u);
}

fn mmu_translate(page: u32, write: bool, thread: u32) -> Translation {
  return mmu_translate_n(page, write, thread, 1u);
}

// ---- the word kernels: a workgroup works a page at a time ----

// Progress is kept per page: a slot holds the stamp of the launch that did its page's words, and a
// later launch skips the page. A page is worked by one workgroup a launch, whole, each invocation
// its share of the words (within a launch they all translate it alike).
struct PageWork {
  ok: bool, // translated: do items lo..hi - 1 on `frame`, then mmu_page_done
  frame: u32,
  lo: u32, // the page's first item in this chunk, and one past its last
  hi: u32,
  slot: u32, // the page within the chunk: its progress slot
}

// Page slots of the chunk (the host dispatches at most as many workgroups as it needs).
fn mmu_pages() -> u32 {
  return (p.first_word + p.items + p.page_words - 1u) / p.page_words;
}

// Start page slot `s`: every invocation of the workgroup translates the page for its own share of
// the page's words, with no barrier (within a launch every invocation reads the same PTE; the host
// changes PTEs only between launches), and only invocation 0 records a fault, counting every item
// of the page here. Not ok when an earlier launch did the page, when it faults (the replay runs
// it) or when the host refused the access (FAIL: its items fail in every launch of this run).
fn mmu_page_begin(s: u32, write: bool, lid: u32, thread: u32) -> PageWork {
  let lo = max(p.first_word, s * p.page_words) - p.first_word;
  let hi = min(p.first_word + p.items, (s + 1u) * p.page_words) - p.first_word;
  var w = PageWork(false, 0u, lo, hi, s);
  let stamp = atomicLoad(&progress[s]);
  if (stamp != 0u && stamp != p.launch) {
    return w; // done by an earlier launch
  }
  let page = p.first_page + s;
  let word = atomicLoad(&pte[page - p.pte_base]);
  let need = select(PTE_READ, PTE_WRITE, write);
  if ((word & need) != 0u) {
    if (write && (word & PTE_DIRTY) == 0u) {
      atomicOr(&pte[page - p.pte_base], PTE_DIRTY);
    }
    w.ok = true;
    w.frame = word & PTE_FRAME_MASK;
  } else if (lid == 0u && (word & select(PTE_FAIL_READ, PTE_FAIL_WRITE, write)) == 0u) {
    mmu_record_fault(page, write, thread, hi - lo);
  }
  return w;
}

// The page's words are done (by this launch: its stamp; invocations of the workgroup still at
// their share see their own launch's stamp and go on).
fn mmu_page_done(w: PageWork, lid: u32) {
  if (lid == 0u) {
    atomicStore(&progress[w.slot], p.launch);
  }
}

// The word of item i within its page (and frame).
fn mmu_word(i: u32) -> u32 {
  return (p.first_word + i) % p.page_words;
}

// For a work item that keeps a count of steps done (atomic): the progress value to leave when a
// step's access did not translate; a refusal marks it failed (> any count: replays skip it).
fn mmu_stop(done: u32, tr: Translation) -> u32 {
  return select(done, done | WORK_FAILED, tr.status == T_FAIL);
}

// Epilogue: the last statement of every kernel's main.
fn mmu_end() {
  if (mmu_raw != 0u) {
    atomicAdd(&faults[F_RAW], mmu_raw);
  }
}

//!include frames.wgsl
