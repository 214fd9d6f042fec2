"""The OpenEncoder face: `/api/` in OpenEncoder's shapes (integer ids, `{"status": 200}` bodies,
raw-option presets, machines), served on its own listener (`VIDMESH_OPENENCODER_PORT`) because
its paths collide with the native API's."""
