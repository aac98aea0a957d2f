//! OCI image layers → one merged tree → a read-only EROFS image.
