//! Just enough of the Redis protocol (RESP2) to send one command and read its whole reply,
//! so that the helpers need no Redis client library: they must work before the code under
//! test does, and a test can look at a server without going through it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long a helper waits for a reply.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`, kept as a value: a refusal is an answer the caller may want to see.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3 foo`; `None` for the nil bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*2 ...`; `None` for the nil array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as `LocalRedis::command` has always shown it: a bulk string's contents
    /// (empty for nil), else the reply's first line without its line end (`+OK`, `-ERR
    /// ...`, `:1`, `*3`).
    pub(crate) fn into_text(self) -> io::Result<String> {
        Ok(match self {
            Reply::Simple(s) => format!("+{s}"),
            Reply::Error(e) => format!("-{e}"),
            Reply::Integer(i) => format!(":{i}"),
            Reply::Bulk(None) => String::new(),
            Reply::Bulk(Some(body)) => String::from_utf8(body).map_err(io::Error::other)?,
            Reply::Array(None) => "*-1".to_owned(),
            Reply::Array(Some(items)) => format!("*{}", items.len()),
        })
    }

    /// A bulk or simple string's text; an error reply becomes an `io::Error`.
    pub(crate) fn into_string(self) -> io::Result<String> {
        match self {
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(Some(body)) => String::from_utf8(body).map_err(io::Error::other),
            other => Err(unexpected(&other)),
        }
    }

    /// Fails on an error reply, with its text.
    pub(crate) fn ok(self) -> io::Result<Reply> {
        match self {
            Reply::Error(e) => Err(io::Error::other(e)),
            other => Ok(other),
        }
    }
}

pub(crate) fn unexpected(reply: &Reply) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply {reply:?}"),
    )
}

/// Sends `args` as one command to `127.0.0.1:port` on a connection of its own and reads the
/// whole reply.
pub(crate) fn call(port: u16, args: &[&[u8]]) -> io::Result<Reply> {
    let mut replies = call_all(port, &[args])?;
    replies.pop().ok_or_else(|| io::Error::other("no reply"))
}

/// Sends `commands` in order on one connection of their own and reads every reply: what
/// needs the connection's state (`WAIT` counts the replicas that have this connection's
/// writes; `ASKING`, `READONLY` and `MULTI` apply to the next commands on it).
pub(crate) fn call_all(port: u16, commands: &[&[&[u8]]]) -> io::Result<Vec<Reply>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut request = Vec::new();
    for args in commands {
        request.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in *args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
    }
    stream.write_all(&request)?;
    let mut reader = BufReader::new(stream);
    commands.iter().map(|_| read_reply(&mut reader)).collect()
}

/// [`call`] with words, the reply shown as [`Reply::into_text`] does.
pub(crate) fn command(port: u16, words: &[&str]) -> io::Result<String> {
    let mut replies = commands(port, &[words])?;
    replies.pop().ok_or_else(|| io::Error::other("no reply"))
}

/// [`call_all`] with words, each reply shown as [`Reply::into_text`] does.
pub(crate) fn commands(port: u16, commands: &[&[&str]]) -> io::Result<Vec<String>> {
    let args: Vec<Vec<&[u8]>> = commands
        .iter()
        .map(|words| words.iter().map(|w| w.as_bytes()).collect())
        .collect();
    let args: Vec<&[&[u8]]> = args.iter().map(Vec::as_slice).collect();
    call_all(port, &args)?
        .into_iter()
        .map(Reply::into_text)
        .collect()
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || -> io::Result<i64> {
        rest.parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body)?;
                body.truncate(len);
                Reply::Bulk(Some(body))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad reply {line:?}"),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Reply {
        read_reply(&mut raw.as_bytes()).unwrap()
    }

    #[test]
    fn reads_every_kind_of_reply_whole() {
        assert_eq!(parse("+OK\r\n"), Reply::Simple("OK".into()));
        assert_eq!(parse("-ERR no\r\n"), Reply::Error("ERR no".into()));
        assert_eq!(parse(":-3\r\n"), Reply::Integer(-3));
        assert_eq!(parse("$-1\r\n"), Reply::Bulk(None));
        assert_eq!(parse("*-1\r\n"), Reply::Array(None));
        // A bulk string may hold line ends.
        assert_eq!(
            parse("$4\r\na\r\nb\r\n"),
            Reply::Bulk(Some(b"a\r\nb".to_vec()))
        );
        assert_eq!(
            parse("*2\r\n$1\r\nk\r\n*1\r\n:1\r\n"),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"k".to_vec())),
                Reply::Array(Some(vec![Reply::Integer(1)])),
            ]))
        );
        assert!(read_reply(&mut "$5\r\nab\r\n".as_bytes()).is_err());
        assert!(read_reply(&mut "?\r\n".as_bytes()).is_err());
    }

    #[test]
    fn text_is_what_local_redis_command_always_showed() {
        let text = |raw: &str| parse(raw).into_text().unwrap();
        assert_eq!(text("+OK\r\n"), "+OK");
        assert_eq!(text("-ERR no\r\n"), "-ERR no");
        assert_eq!(text(":7\r\n"), ":7");
        assert_eq!(text("$-1\r\n"), "");
        assert_eq!(text("$3\r\nabc\r\n"), "abc");
        assert_eq!(text("*2\r\n:1\r\n:2\r\n"), "*2");
    }
}
