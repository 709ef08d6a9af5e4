// The main of a word kernel (devwrite, devread, checksum: an item per 4-byte word): the workgroups
// take the chunk's pages in turn, each invocation its share of a page's words, through the device
// MMU's page translation (mmu.wgsl mmu_page_begin). The kernel defines WORD_WRITE (whether its
// accesses are stores) and word_body(pg, i), the work of item i of page pg.

@compute @workgroup_size(256)
fn main(
  @builtin(global_invocation_id) gid: vec3<u32>,
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(num_workgroups) nwg: vec3<u32>,
) {
  for (var s = wid.x; s < mmu_pages(); s += nwg.x) {
    let pg = mmu_page_begin(s, WORD_WRITE, lid, gid.x);
    if (pg.ok) {
      for (var i = pg.lo + lid; i < pg.hi; i += 256u) {
        word_body(pg, i);
      }
      mmu_page_done(pg, lid);
    }
  }
  mmu_end();
}
