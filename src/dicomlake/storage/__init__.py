"""Object storage for blobs and buckets, and the index database schema."""
