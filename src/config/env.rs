//! `${VAR}` in the config's string values, replaced from the environment
//! before the file is parsed (secrets such as `admin.token` stay out of the
//! file). `$${` writes a literal `${`. Only quoted strings are touched, so
//! a `${...}` in a comment is just text. Control path, pure but for the
//! lookup it is given.

/// An unset variable, at a byte offset of the original text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unset {
    pub(crate) offset: usize,
    pub(crate) name: String,
}

/// The text with every `${NAME}` inside a quoted string replaced by
/// `lookup(NAME)`; the unset ones (all of them) otherwise.
pub(crate) fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Unset>> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let bytes = text.as_bytes();
    let (mut i, mut quote) = (0, None::<u8>);
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            None if c == b'#' => {
                // A comment: copy to the end of the line as it is.
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                out.push_str(&text[i..end]);
                i = end;
                continue;
            }
            None if c == b'"' || c == b'\'' => quote = Some(c),
            Some(q) if c == q => quote = None,
            Some(b'"') if c == b'\\' && i + 1 < bytes.len() => {
                out.push_str(&text[i..i + 2]);
                i += 2;
                continue;
            }
            Some(_) if text[i..].starts_with("$${") => {
                out.push_str("${");
                i += 3;
                continue;
            }
            Some(_) if text[i..].starts_with("${") => {
                if let Some(close) = text[i + 2..].find('}') {
                    let name = &text[i + 2..i + 2 + close];
                    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => unset.push(Unset {
                                offset: i,
                                name: name.to_string(),
                            }),
                        }
                        i += close + 3;
                        continue;
                    }
                }
            }
            _ => {}
        }
        // Copy one character (whole, for non-ASCII text).
        let len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + len]);
        i += len;
    }
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "PORT" => Some("9090".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_in_strings_are_replaced_and_comments_left_alone() {
        let text = "token = \"${TOKEN}\" # not ${THIS}\nlisten = '127.0.0.1:${PORT}'\nx = \"$${TOKEN} é\"\n";
        assert_eq!(
            substitute(text, env).unwrap(),
            "token = \"s3cret\" # not ${THIS}\nlisten = '127.0.0.1:9090'\nx = \"${TOKEN} é\"\n"
        );
    }

    #[test]
    fn every_unset_variable_is_reported_where_it_is() {
        let text = "a = \"${NOPE}\"\nb = \"${TOKEN}${ALSO_NOT}\"\n";
        let unset = substitute(text, env).unwrap_err();
        assert_eq!(
            unset,
            vec![
                Unset {
                    offset: 5,
                    name: "NOPE".into()
                },
                Unset {
                    offset: 27,
                    name: "ALSO_NOT".into()
                },
            ]
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        let text = "a = \"say \\\"${TOKEN}\\\"\"\n";
        assert_eq!(substitute(text, env).unwrap(), "a = \"say \\\"s3cret\\\"\"\n");
    }
}
