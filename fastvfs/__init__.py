"""fastvfs: a virtio-fs device backend (vhost-user-fs daemon) with a Cython hot path."""

__version__ = "0.1.0"
