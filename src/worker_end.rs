//! What a server made on a worker thread does when the worker ends without
//! having shut it down (it finished, or was terminated): it shuts itself
//! down, as the worker's own sockets close. Otherwise it would keep its
//! port, its clients and its Redis connections, with no JavaScript left to
//! answer them, for as long as the process lives (the engine outlives the
//! worker whenever another thread has the addon loaded). An emitter needs
//! no such hook: its connection closes when the worker's objects are
//! finalized, as its only handle goes with them; a server's tasks hold
//! their own.

use std::sync::Arc;

/// Runs `on_end` with `state` when the calling thread's JavaScript
/// environment ends, if that thread is a worker. On the main thread it does
/// nothing: the process's exit ends everything anyway.
///
/// The hook holds `state` weakly, so that it keeps nothing alive that was
/// dropped before the thread ended; it stays registered until then.
pub fn on_worker_end<T: 'static>(
    env: &napi::Env,
    state: &Arc<T>,
    on_end: impl FnOnce(Arc<T>) + 'static,
) -> napi::Result<()> {
    if crate::js_thread::on_main_thread() {
        return Ok(());
    }
    env.add_env_cleanup_hook(Arc::downgrade(state), move |state| {
        if let Some(state) = state.upgrade() {
            on_end(state);
        }
    })?;
    Ok(())
}
