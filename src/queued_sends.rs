//! `sendToClient`'s queued sends as a bare N-API function: the one crossing
//! per batch of events that carries its replies.
//!
//! A `#[napi]` method pays napi-rs's per-call guards before its body runs:
//! the receiver's type tag is checked through N-API, and the `&self` borrow
//! is registered in, then removed from, a process-wide map behind a mutex
//! (measured in docs/PERFORMANCE.md, "The queued sends through a bare N-API
//! function"). This function carries its target in the callback's data
//! pointer instead: nothing to look up, nothing to check, and nothing to
//! register, since its target is shared (`Arc`) and never handed out `&mut`.
//! The batch's text is read into a buffer kept between calls.

use crate::core::log::panic_text;
use crate::core::server::Server;
use crate::run_mode::{with_core, Exec};
use napi::bindgen_prelude::{FromNapiValue, Function, ToNapiValue};
use napi::{check_status, sys, Env, Error, JsError, Result, Status};
use parking_lot::Mutex;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

/// What the function sends through: the server's core (absent before
/// `start`) and where the core runs; whichever of this function and its
/// `NativeServer` is finalized last drops the core. And the buffer the
/// batch's UTF-8 is read into, kept from call to call (the function is only
/// ever called on its JavaScript thread): no allocation, and no zeroing,
/// per batch. It is taken out for the length of a call, so that a call made
/// from inside another (a task run by the send reaching JavaScript) reads
/// into a buffer of its own.
struct Sender {
    exec: Exec,
    server: Arc<Mutex<Option<Arc<Server>>>>,
    buf: Cell<Vec<u8>>,
}

/// A buffer grown past this by a large batch is not kept.
const KEEP: usize = 64 * 1024;

/// The function `(batch: string, last?: boolean) => number`, sending
/// through `server` on `exec`.
pub fn create(
    env: &Env,
    exec: Exec,
    server: Arc<Mutex<Option<Arc<Server>>>>,
) -> Result<Function<'_, String, u32>> {
    const NAME: &str = "sendQueued";
    let data = Box::into_raw(Box::new(Sender {
        exec,
        server,
        buf: Cell::new(Vec::new()),
    }));
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
    let mut argc = 2;
    let mut args = [ptr::null_mut(); 2];
    let mut data = ptr::null_mut();
    let sent = check_status!(unsafe {
        sys::napi_get_cb_info(
            env,
            info,
            &mut argc,
            args.as_mut_ptr(),
            ptr::null_mut(),
            &mut data,
        )
    })
    .and_then(|()| {
        if argc < 1 {
            return Err(Error::new(
                Status::InvalidArg,
                "sendQueued: a batch is required",
            ));
        }
        // SAFETY: `data` is the `Sender` `create` leaked; its finalizer,
        // which frees it, cannot run while the function is being called.
        let sender = unsafe { &*data.cast::<Sender>() };
        let [arg, last] = args;
        // `last`: the batch is the last thing the event callback does, and
        // its return turns the runtime; no turn of its own is needed.
        let last = argc >= 2 && unsafe { truthy(env, last) };
        let mut buf = sender.buf.take();
        let sent = unsafe { read_utf8(env, arg, &mut buf) }.and_then(|batch| {
            catch_unwind(AssertUnwindSafe(|| {
                let send = || with_core(&sender.server, |s| s.send_to_clients(batch) as u32, 0);
                if last {
                    sender.exec.call_before_turn(send)
                } else {
                    sender.exec.call(send)
                }
            }))
            .map_err(|panic| {
                let what = panic_text(&*panic);
                Error::new(
                    Status::GenericFailure,
                    format!("sendQueued: the send panicked: {what}"),
                )
            })
        });
        if buf.capacity() <= KEEP {
            sender.buf.set(buf);
        }
        sent
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

/// The string `value` as UTF-8, written into `buf`. Checked: a client id
/// may hold a lone surrogate, and what an engine's N-API writes for one is
/// its own affair.
unsafe fn read_utf8(env: sys::napi_env, value: sys::napi_value, buf: &mut Vec<u8>) -> Result<&str> {
    let not_a_string = || {
        Error::new(
            Status::StringExpected,
            "sendQueued: the batch must be a string",
        )
    };
    let mut len = 0;
    if unsafe { sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut len) }
        != sys::Status::napi_ok
    {
        return Err(not_a_string());
    }
    buf.clear();
    // One more byte for the terminating NUL N-API writes.
    buf.reserve(len + 1);
    let mut written = 0;
    check_status!(unsafe {
        sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr().cast(), len + 1, &mut written)
    })?;
    // SAFETY: N-API wrote `written` bytes (≤ `len`, within the capacity).
    unsafe { buf.set_len(written.min(len)) };
    std::str::from_utf8(buf)
        .map_err(|e| Error::new(Status::InvalidArg, format!("sendQueued: not UTF-8: {e}")))
}

unsafe extern "C" fn finalize(
    _env: sys::napi_env,
    data: *mut std::ffi::c_void,
    _hint: *mut std::ffi::c_void,
) {
    drop(unsafe { Box::from_raw(data.cast::<Sender>()) });
}

/// Whether `value` is `true` (anything else, `undefined` included, is not).
unsafe fn truthy(env: sys::napi_env, value: sys::napi_value) -> bool {
    let mut b = false;
    (unsafe { sys::napi_get_value_bool(env, value, &mut b) }) == sys::Status::napi_ok && b
}
