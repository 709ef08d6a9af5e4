// checksum: one work item per word of [off, off + len); per page, the wrapping sum and the xor of
// its words, reduced with atomics into out[2 * (page - first_page)] and out[... + 1]. Each word is
// added once: progress says which words are in, so replays do not add twice.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.items; i += p.threads) {
    let w = mmu_word_item(i, false, gid.x);
    if (!w.ok) {
      continue;
    }
    let v = frame_load(w.frame, w.offset);
    let o = (w.page - p.first_page) * 2u;
    atomicAdd(&out[o], v);
    atomicXor(&out[o + 1u], v);
    mmu_item_done(w);
  }
  mmu_end();
}
