//! Link settings a Node addon needs (undefined napi symbols resolved by
//! the node binary at load time).

fn main() {
    napi_build::setup();
}
