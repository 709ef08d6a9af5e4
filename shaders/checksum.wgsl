// checksum: one work item per word of [off, off + len); per page, the wrapping sum and the xor of
// its words, reduced with atomics into out[2 * (page - first_page)] and out[... + 1]. Each word is
// added once: progress says which words are in, so replays do not add twice.
//!include mmu.wgsl

const WORD_WRITE: bool = false;

fn word_body(pg: PageWork, i: u32) {
  let v = frame_load(pg.frame, mmu_word(i));
  atomicAdd(&out[pg.slot * 2u], v);
  atomicXor(&out[pg.slot * 2u + 1u], v);
}

//!include mmu_words.wgsl
