"""Transports that carry FUSE requests to the engine besides vhost-user (see vhost_user/)."""
