// devread: one work item per 4-byte word of [off, off + len); copies the word into out[i] so
// the host can return or hash the bytes.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.items; i += p.threads) {
    let w = mmu_word_item(i, false, gid.x);
    if (!w.ok) {
      continue;
    }
    atomicStore(&out[i], frame_load(w.frame, w.offset));
    mmu_item_done(w);
  }
  mmu_end();
}
