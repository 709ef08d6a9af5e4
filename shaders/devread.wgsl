// devread: one work item per 4-byte word of [off, off + len); copies the word into out[i] so
// the host can return or hash the bytes.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  for (var i = t; i < p.items; i += p.threads) {
    if (progress[i] != 0u) {
      continue;
    }
    let word = p.first_word + i;
    let tr = mmu_translate(word / p.page_words, false, t);
    if (tr.status == T_FAULT) {
      continue; // this work item stops undone; the replay runs it
    }
    if (tr.status == T_FAIL) {
      progress[i] = WORK_FAILED;
      continue;
    }
    atomicStore(&out[i], frame_load(tr.frame, word % p.page_words));
    progress[i] = WORK_DONE;
  }
}
