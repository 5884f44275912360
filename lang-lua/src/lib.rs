//! lang-lua
