// atomic: `items` logical threads each do `k` atomicAdd(1) on the words of [off, off + len),
// increment j of thread i on word (i * spread + j) mod nwords (spread: threads start spread over
// the range). progress[i] counts the increments done, so a replay resumes each thread where its
// fault stopped it and never counts one twice.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.items; i += p.threads) {
    var done = atomicLoad(&progress[i]);
    while (done < p.k) {
      let word = p.first_word + ((p.item_base + i) * p.spread + done) % p.nwords;
      let tr = mmu_translate(p.range_page + word / p.page_words, true, gid.x);
      if (tr.status != T_OK) {
        done = mmu_stop(done, tr); // a fault: the replay resumes it at `done`
        break;
      }
      frame_add(tr.frame, word % p.page_words, 1u);
      done += 1u;
    }
    atomicStore(&progress[i], done);
  }
  mmu_end();
}
