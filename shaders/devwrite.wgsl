// devwrite: one work item per 4-byte word of [off, off + len); writes the op log's pattern
// byte(x) = (x + 7 * tag) mod 251 at file offset x (docs/oplog.md), computed here on the GPU from
// the chunk's pattern_base (item 0's byte), so file offsets past 4 GiB stay exact.
//!include mmu.wgsl

// The pattern word of item i: its bytes are 4i .. 4i + 3 past item 0's.
fn pattern_word(i: u32) -> u32 {
  let x = p.pattern_base + (i % 251u) * 4u;
  var v = 0u;
  for (var b = 0u; b < 4u; b++) {
    v |= ((x + b) % 251u) << (8u * b);
  }
  return v;
}

const WORD_WRITE: bool = true;

fn word_body(pg: PageWork, i: u32) {
  frame_store(pg.frame, mmu_word(i), pattern_word(i));
}

//!include mmu_words.wgsl
