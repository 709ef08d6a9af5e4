// devwrite: one work item per 4-byte word of [off, off + len); writes the op log's pattern
// byte(x) = (x + 7 * tag) mod 251 at file offset x (oplog.md), computed here on the GPU.
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
  let t = gid.x;
  for (var i = t; i < p.items; i += p.threads) {
    if (progress[i] != 0u) {
      continue;
    }
    let word = p.first_word + i;
    let tr = mmu_translate(word / p.page_words, true, t);
    if (tr.status == T_FAULT) {
      continue; // this work item stops undone; the replay runs it
    }
    if (tr.status == T_FAIL) {
      progress[i] = WORK_FAILED;
      continue;
    }
    frame_store(tr.frame, word % p.page_words, pattern_word(word * 4u));
    progress[i] = WORK_DONE;
  }
}
