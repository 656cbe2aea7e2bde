"""containerd remote snapshotter: containers start from the layer trees of a pycvmfs-mounted
image repository instead of downloaded and unpacked layers.

How containerd talks to it (facts from containerd 1.6's API and the reference's
snapshotter, cvmfs/cvmfs `snapshotter/`, which is stargz-snapshotter's base snapshotter
with a CernVM-FS file system):

- containerd loads it as a proxy plugin, `[proxy_plugins.NAME] type = "snapshot"
  address = "/PATH.sock"`, and calls the gRPC service
  `containerd.services.snapshots.v1.Snapshots` (api/services/snapshots/v1/snapshots.proto;
  mounts are `containerd.types.Mount`, api/types/mount.proto) on that unix socket. The keys
  it sends are its backend keys (namespace and a sequence number folded in), opaque here.
- Unpacking an image, containerd prepares one snapshot per layer, parent = the previous
  layer's chain ID, with the label `containerd.io/snapshot.ref` = the chain ID it will
  commit; a remote-aware client adds `containerd.io/snapshot/cri.layer-digest` (and
  `cri.image-ref`, `cri.image-layers`). When the layer is at
  `MNT/.layers/<d[:2]>/<hex>/layerfs` (the reference looks only at the digest label, and
  so does layers.py), the snapshotter commits the chain ID as a remote snapshot labelled
  `containerd.io/snapshot/remote` and answers ALREADY_EXISTS: containerd skips the fetch
  and the apply. Otherwise Prepare returns an ordinary local mount and containerd unpacks
  the layer into it (the fallback that lets any image run).
- A container's rootfs is an active snapshot on the image's top chain ID; Mounts returns
  an overlay whose lowerdirs are the layer trees (on the mount, or local for fallback
  layers) and whose upperdir/workdir are local. Unlike the reference, which bind-mounts
  each layer under its own root, the lowerdirs are the mount's paths directly: nothing to
  mount or unmount per layer, nothing to redo after a restart.

Modules: api (message classes from containerd's .proto, compiled by `make grpc-stubs`),
errors (gRPC status per error), store (SQLite metadata), layers (finding layer trees),
filters (containerd's filter syntax for List), snapshots (the semantics), service (the
gRPC servicer), server (the unix socket); and for `pycvmfs snapshotter pull`, which
registers an image in containerd with its layers adopted from the repository: pull_plan
(chain IDs, labels, descriptors), containerd_client (containerd's Content, Images, Leases,
Snapshots and Diff services), pull (the sequence).
"""
