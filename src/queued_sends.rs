//! `sendToClient`'s queued sends as a bare N-API function: the one crossing
//! per batch of events that carries its replies.
//!
//! A `#[napi]` method pays napi-rs's per-call guards before its body runs:
//! the receiver's type tag is checked through N-API, and the `&self` borrow
//! is registered in, then removed from, a process-wide map behind a mutex.
//! Together with the argument list's unwrapping that came to ≈ 420
//! instructions per call, a quarter of the reply's path outside V8 in
//! scenario (d). This function carries its target in the callback's data
//! pointer instead: nothing to look up, nothing to check, and nothing to
//! register, since its target is shared (`Arc`) and never handed out `&mut`.

use crate::core::server::Server;
use crate::run_mode::Exec;
use napi::bindgen_prelude::{FromNapiValue, Function, ToNapiValue};
use napi::{check_status, sys, Env, Error, JsError, Result, Status};
use parking_lot::Mutex;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

/// What the function sends through: the server's core (absent before
/// `start` and after `stop`) and where the core runs.
pub struct Target {
    pub exec: Exec,
    pub server: Arc<Mutex<Option<Arc<Server>>>>,
}

impl Target {
    /// `clientId\nevent\ndata\n…` (`protocol::each_queued_send`): how many
    /// frames were queued.
    fn send(&self, batch: &str) -> u32 {
        self.exec.call(|| match self.server.lock().as_ref() {
            Some(s) => s.send_to_clients(batch) as u32,
            None => 0,
        })
    }
}

/// The function `(batch: string) => number`; `target` lives as long as it.
pub fn create(env: &Env, target: Target) -> Result<Function<'_, String, u32>> {
    const NAME: &str = "sendQueued";
    let data = Box::into_raw(Box::new(target));
    let mut f = ptr::null_mut();
    let made = check_status!(unsafe {
        sys::napi_create_function(
            env.raw(),
            NAME.as_ptr().cast(),
            NAME.len() as isize,
            Some(call),
            data.cast(),
            &mut f,
        )
    })
    .and_then(|()| {
        check_status!(unsafe {
            sys::napi_add_finalizer(
                env.raw(),
                f,
                data.cast(),
                Some(finalize),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })
    });
    if let Err(e) = made {
        // No finalizer owns it: it goes here.
        drop(unsafe { Box::from_raw(data) });
        return Err(e);
    }
    unsafe { Function::from_napi_value(env.raw(), f) }
}

unsafe extern "C" fn call(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let mut argc = 1;
    let mut arg = ptr::null_mut();
    let mut data = ptr::null_mut();
    let sent = check_status!(unsafe {
        sys::napi_get_cb_info(env, info, &mut argc, &mut arg, ptr::null_mut(), &mut data)
    })
    .and_then(|()| {
        if argc < 1 {
            return Err(Error::new(
                Status::InvalidArg,
                "sendQueued: a batch is required",
            ));
        }
        let batch = unsafe { String::from_napi_value(env, arg) }?;
        // SAFETY: `data` is the `Target` `create` leaked; its finalizer,
        // which frees it, cannot run while the function is being called.
        let target = unsafe { &*data.cast::<Target>() };
        catch_unwind(AssertUnwindSafe(|| target.send(&batch)))
            .map_err(|_| Error::new(Status::GenericFailure, "sendQueued: the send panicked"))
    })
    .and_then(|sent| unsafe { u32::to_napi_value(env, sent) });
    match sent {
        Ok(v) => v,
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env) };
            ptr::null_mut()
        }
    }
}

unsafe extern "C" fn finalize(
    _env: sys::napi_env,
    data: *mut std::ffi::c_void,
    _hint: *mut std::ffi::c_void,
) {
    drop(unsafe { Box::from_raw(data.cast::<Target>()) });
}
