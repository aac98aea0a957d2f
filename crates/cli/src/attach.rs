//! Connecting the user's terminal to a guest process: output copied as it
//! arrives, stdin forwarded with `-i`, a PTY with `-t`, and signals passed
//! on so Ctrl-C reaches the guest process, not the CLI.

use crate::tty;
use supermachine::{Child, ChildOutput, Error, ExitStatus};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

/// Runs `child` to the end against this process's stdio.
pub async fn attach(mut child: Child, interactive: bool, tty: bool) -> Result<ExitStatus, Error> {
    // Raw mode for the whole session; restored on every way out.
    let _raw = if tty { tty::RawMode::enable() } else { None };
    let stdout = tokio::spawn(copy_out(child.stdout.take(), tokio::io::stdout()));
    let stderr = tokio::spawn(copy_out(child.stderr.take(), tokio::io::stderr()));
    let stdin = child.stdin.take();
    if interactive {
        if let Some(mut pipe) = stdin {
            tokio::spawn(async move {
                let mut input = tokio::io::stdin();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match input.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if pipe.write(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Dropping `pipe` ends the guest's input.
            });
        }
    } else {
        drop(stdin);
    }
    let control = child.control();
    let mut winch = signal(SignalKind::window_change()).map_err(|e| Error::io("SIGWINCH", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT", e))?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM", e))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP", e))?;
    let wait = child.wait();
    tokio::pin!(wait);
    let status = loop {
        // Signal and resize failures mean the process is ending: the wait
        // reports how.
        tokio::select! {
            status = &mut wait => break status?,
            _ = winch.recv(), if tty => {
                if let Some((rows, cols)) = tty::window_size() {
                    let _ = control.resize(rows, cols).await;
                }
            }
            _ = int.recv() => { let _ = control.signal(libc::SIGINT).await; }
            _ = term.recv() => { let _ = control.signal(libc::SIGTERM).await; }
            _ = hup.recv() => { let _ = control.signal(libc::SIGHUP).await; }
        }
    };
    // The output tasks end once the streams are drained.
    let _ = stdout.await;
    let _ = stderr.await;
    Ok(status)
}

/// Copies one output stream, flushing every chunk so interactive output
/// shows at once.
async fn copy_out(stream: Option<ChildOutput>, mut sink: impl AsyncWrite + Unpin) {
    let Some(mut stream) = stream else { return };
    while let Some(chunk) = stream.recv().await {
        if sink.write_all(&chunk).await.is_err() || sink.flush().await.is_err() {
            // The reader of our output went away (a closed pipe): keep
            // draining so the guest process is not blocked forever.
            while stream.recv().await.is_some() {}
            return;
        }
    }
}
