// checksum: one work item per word of [off, off + len); per page, the wrapping sum and the xor of
// its words, reduced with atomics into out[2 * (page - first_page)] and out[... + 1]. Each word is
// added once: progress says which words are in, so replays do not add twice.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x;
  for (var i = t; i < p.items; i += p.threads) {
    if (progress[i] != 0u) {
      continue;
    }
    let word = p.first_word + i;
    let page = word / p.page_words;
    let tr = mmu_translate(page, false, t);
    if (tr.status == T_FAULT) {
      continue; // this work item stops undone; the replay runs it
    }
    if (tr.status == T_FAIL) {
      progress[i] = WORK_FAILED;
      continue;
    }
    let v = frame_load(tr.frame, word % p.page_words);
    let o = (page - p.first_page) * 2u;
    atomicAdd(&out[o], v);
    atomicXor(&out[o + 1u], v);
    progress[i] = WORK_DONE;
  }
}
