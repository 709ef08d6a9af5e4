// The device MMU, shared by every device kernel (`//!include mmu.wgsl`): a kernel is only its body.
//
// A kernel is a grid-stride loop over its work items and a body: mmu_word_item(i, write, thread)
// translates item i's word (or says skip it), mmu_item_done(i) marks it done, mmu_end() ends
// main. The atomic kernel, whose items take many steps, calls mmu_translate and mmu_stop itself.
//
// Every device access goes through mmu_translate(page, write, thread). With permission it returns
// the frame (setting the PTE's DIRTY bit on the first store). Without, it records a fault in the
// fault buffer, as replayable-fault hardware does, and the logical thread (work item) must leave
// its work undone and stop; the invocation goes on to its next work item of the grid-stride loop,
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
// thread to fault on (page, access) in this launch takes an entry, so ten thousand threads on one
// page are one fault to service, and the counter keeps how many there were.
fn mmu_record_fault(page: u32, write: bool, thread: u32) {
  mmu_raw += 1u;
  let slot_bit = (page - p.first_page) * 2u + select(0u, 1u, write);
  let before = atomicAdd(&faults[p.counts_base + slot_bit], 1u);
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

fn mmu_translate(page: u32, write: bool, thread: u32) -> Translation {
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
  mmu_record_fault(page, write, thread);
  return Translation(T_FAULT, 0u);
}

// ---- the work-item prologue and epilogue every kernel shares ----

// A word-sized work item (devwrite, devread, checksum: item i is the chunk's word i, counted from
// word first_word of page first_page).
//
// Progress is kept per page, not per word: within one launch every item of a page translates the
// same way (the host changes PTEs only between launches), so a page's items are all done by the
// same launch or all left undone. A slot holds the stamp of the launch that did its page's work; a
// later launch skips the page, while the items of the stamping launch itself go on.
struct WordItem {
  ok: bool, // translated: do the work, then mmu_item_done(it); else skip it (continue)
  page: u32, // page index in the address space
  frame: u32, // the page's frame, when ok
  offset: u32, // the word within its page (and frame)
  slot: u32, // the page within the chunk: its progress slot
  stamp: u32, // the slot's value when the item started
}

// Prologue of work item i for `thread`: not ok when an earlier launch did its page, when its access
// faults (recorded; the replay runs it) or when the host refused the access (FAIL: its page's items
// fail in every launch of this run, and no fault is recorded).
fn mmu_word_item(i: u32, write: bool, thread: u32) -> WordItem {
  let w = p.first_word + i;
  let slot = w / p.page_words;
  var it = WordItem(false, p.first_page + slot, 0u, w % p.page_words, slot, atomicLoad(&progress[slot]));
  if (it.stamp != 0u && it.stamp != p.launch) {
    return it;
  }
  let tr = mmu_translate(it.page, write, thread);
  it.ok = tr.status == T_OK;
  it.frame = tr.frame;
  return it;
}

fn mmu_item_done(it: WordItem) {
  if (it.stamp != p.launch) {
    atomicStore(&progress[it.slot], p.launch);
  }
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
