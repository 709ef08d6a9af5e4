// devread: one work item per 4-byte word of [off, off + len); copies the word into out[i] so
// the host can return or hash the bytes.
//!include mmu.wgsl

const WORD_WRITE: bool = false;

fn word_body(pg: PageWork, i: u32) {
  atomicStore(&out[i], frame_load(pg.frame, mmu_word(i)));
}

//!include mmu_words.wgsl
