// slots: `items` logical threads, thread t stores its slot value once, to the word t * spread
// (mod nwords) of [off, off + len): a per-thread slot (hmmlab stress --concurrent). The value names
// the run and the thread: (tag << 20) | (t & 0xfffff), tag the op's 12-bit tag (pattern_base). A
// thread whose access faults leaves its slot unwritten (progress 0) and the replay runs it.
//!include mmu.wgsl

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  for (var i = gid.x; i < p.items; i += p.threads) {
    var done = atomicLoad(&progress[i]);
    if (done != 0u) {
      continue;
    }
    let t = p.item_base + i;
    let word = p.first_word + (t * p.spread) % p.nwords;
    let tr = mmu_translate(p.range_page + word / p.page_words, true, gid.x);
    if (tr.status == T_OK) {
      frame_store(tr.frame, word % p.page_words, (p.pattern_base << 20u) | (t & 0xfffffu));
      done = 1u;
    } else {
      done = mmu_stop(done, tr); // a fault: the replay runs it again
    }
    atomicStore(&progress[i], done);
  }
  mmu_end();
}
