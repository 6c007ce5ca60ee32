//! Browser tests (headless Chromium): see the module added with the page.
