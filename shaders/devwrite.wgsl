// devwrite: one work item per 4-byte word of [off, off + len); writes the op log's pattern
// byte(x) = (x + 7 * tag) mod 251 at file offset x (docs/oplog.md), computed here on the GPU.
//!include mmu.wgsl

fn pattern_word(x: u32) -> u32 {
  var v = 0u;
  for (var b = 0u; b < 4u; b++) {
    v |= (((x + b) % 251u + p.tag_mod) % 251u) << (8u * b);
  }
  return v;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.items; i += p.threads) {
    let w = mmu_word_item(i, true, gid.x);
    if (!w.ok) {
      continue;
    }
    frame_store(w.frame, w.offset, pattern_word(w.word * 4u));
    mmu_item_done(i);
  }
  mmu_end();
}
