use std::collections::BTreeMap;

use habitus::dockerfile::{
    from_images, instructions, rewrite, unique_name, DockerfileErrorKind, FromLine,
    MAX_DOCKERFILE_SIZE,
};
use proptest::prelude::{prop_assert_eq, prop_oneof, proptest, Just};
use proptest::strategy::Strategy;

/// The step images of a typical build.yml, with uid `ab12`.
fn images() -> BTreeMap<String, String> {
    [
        "myorg/app_compile",
        "myorg/app:1.0",
        "myorg/base:latest",
        "compile",
        "localhost:5000/tools",
    ]
    .into_iter()
    .map(|name| (name.to_owned(), unique_name(name, Some("ab12"))))
    .collect()
}

/// Rewrites `src` with [`images`] and checks the text and the references.
#[track_caller]
fn check(src: &str, want: &str, references: &[&str]) {
    let rewritten = rewrite(src, &images()).unwrap();
    let text = String::from_utf8(rewritten.text).unwrap();
    assert_eq!(text, want);
    assert_eq!(rewritten.references, references);
    assert_eq!(
        text.lines().count(),
        src.lines().count(),
        "line count changed"
    );
}

/// Checks that `src` is left exactly as it is.
#[track_caller]
fn unchanged(src: &str) {
    check(src, src, &[]);
}

#[track_caller]
fn error(src: &str) -> String {
    rewrite(src, &images()).unwrap_err().to_string()
}

#[test]
fn unique_names_follow_go_habitus() {
    for (name, uid, want) in [
        ("myorg/app_compile", Some("ab12"), "myorg/app_compile-ab12"),
        ("myorg/app:1.0", Some("ab12"), "myorg/app-ab12:1.0"),
        ("app", Some("ab12"), "app-ab12"),
        ("MyOrg/App:V1", Some("AB12"), "myorg/app-ab12:v1"),
        (
            "localhost:5000/app:tag",
            Some("ab12"),
            "localhost:5000/app-ab12:tag",
        ),
        (
            "localhost:5000/app",
            Some("ab12"),
            "localhost:5000/app-ab12",
        ),
        (
            "registry.example.com:443/team/app:2",
            Some("x"),
            "registry.example.com:443/team/app-x:2",
        ),
        (
            "myorg/app@sha256:abc",
            Some("ab12"),
            "myorg/app-ab12@sha256:abc",
        ),
        ("myorg/App:1.0", None, "myorg/App:1.0"),
        ("myorg/App:1.0", Some(""), "myorg/App:1.0"),
    ] {
        assert_eq!(
            unique_name(name, uid),
            want,
            "unique_name({name:?}, {uid:?})"
        );
    }
}

#[test]
fn from_is_rewritten_keeping_every_other_byte() {
    check(
        "FROM myorg/app_compile\nRUN make\n",
        "FROM myorg/app_compile-ab12\nRUN make\n",
        &["myorg/app_compile"],
    );
    check(
        "  from\tmyorg/app_compile   \n",
        "  from\tmyorg/app_compile-ab12   \n",
        &["myorg/app_compile"],
    );
    check(
        "From myorg/app_compile",
        "From myorg/app_compile-ab12",
        &["myorg/app_compile"],
    );
}

#[test]
fn crlf_line_endings_are_kept() {
    check(
        "FROM myorg/app_compile\r\nRUN make\r\n",
        "FROM myorg/app_compile-ab12\r\nRUN make\r\n",
        &["myorg/app_compile"],
    );
}

#[test]
fn platform_flag_and_stage_name() {
    check(
        "FROM --platform=$BUILDPLATFORM myorg/app_compile AS build\n",
        "FROM --platform=$BUILDPLATFORM myorg/app_compile-ab12 AS build\n",
        &["myorg/app_compile"],
    );
    check(
        "FROM --platform=linux/amd64 myorg/app:1.0 as Runtime\n",
        "FROM --platform=linux/amd64 myorg/app-ab12:1.0 as Runtime\n",
        &["myorg/app:1.0"],
    );
}

#[test]
fn tags_latest_and_untagged_match_each_other() {
    check(
        "FROM myorg/app_compile:latest\n",
        "FROM myorg/app_compile-ab12\n",
        &["myorg/app_compile"],
    );
    check(
        "FROM myorg/base\n",
        "FROM myorg/base-ab12:latest\n",
        &["myorg/base:latest"],
    );
    check(
        "FROM localhost:5000/tools:latest\n",
        "FROM localhost:5000/tools-ab12\n",
        &["localhost:5000/tools"],
    );
    // Other tags are other images.
    unchanged("FROM myorg/app\nFROM myorg/app:2.0\nFROM myorg/app_compile:1\n");
    // So are names that merely contain a step's name.
    unchanged("FROM docker.io/myorg/app_compile\nFROM myorg/app_compile_x\n");
}

#[test]
fn several_stages_and_references_in_order_of_use() {
    check(
        "FROM myorg/app:1.0 AS one\n\
         FROM myorg/app_compile AS two\n\
         FROM myorg/app:1.0\n\
         COPY --from=one /a /a\n",
        "FROM myorg/app-ab12:1.0 AS one\n\
         FROM myorg/app_compile-ab12 AS two\n\
         FROM myorg/app-ab12:1.0\n\
         COPY --from=one /a /a\n",
        &["myorg/app:1.0", "myorg/app_compile"],
    );
}

#[test]
fn stage_names_shadow_step_images() {
    // `compile` is both a step image and, from line 2 on, a stage.
    check(
        "FROM compile\n\
         FROM myorg/app_compile AS Compile\n\
         RUN make\n\
         FROM compile\n\
         FROM COMPILE\n\
         COPY --from=compile /bin/app /app\n",
        "FROM compile-ab12\n\
         FROM myorg/app_compile-ab12 AS Compile\n\
         RUN make\n\
         FROM compile\n\
         FROM COMPILE\n\
         COPY --from=compile /bin/app /app\n",
        &["compile", "myorg/app_compile"],
    );
    // `COPY --from` sees every stage, also later ones.
    unchanged("FROM scratch\nCOPY --from=compile /a /a\nFROM scratch AS compile\n");
}

#[test]
fn copy_from_is_rewritten() {
    check(
        "FROM scratch\n\
         COPY --from=myorg/app_compile /usr/bin/app /app\n\
         copy --chown=0:0 --from=myorg/app:1.0 /etc/x /etc/x\n\
         COPY --from=\"myorg/app_compile\" /a /a\n\
         COPY --from='localhost:5000/tools' /b /b\n",
        "FROM scratch\n\
         COPY --from=myorg/app_compile-ab12 /usr/bin/app /app\n\
         copy --chown=0:0 --from=myorg/app-ab12:1.0 /etc/x /etc/x\n\
         COPY --from=\"myorg/app_compile-ab12\" /a /a\n\
         COPY --from='localhost:5000/tools-ab12' /b /b\n",
        &["myorg/app_compile", "myorg/app:1.0", "localhost:5000/tools"],
    );
}

#[test]
fn what_copy_from_leaves_alone() {
    unchanged(
        "FROM scratch AS base\n\
         FROM scratch\n\
         COPY --from=0 /a /a\n\
         COPY --from=base /a /a\n\
         COPY --from=$IMAGE /a /a\n\
         COPY --from=${IMAGE} /a /a\n\
         COPY --from myorg/app_compile /a /a\n\
         COPY myorg/app_compile /a\n\
         ADD --chown=1 myorg/app_compile /a\n\
         COPY [\"myorg/app_compile\", \"/a\"]\n\
         RUN echo --from=myorg/app_compile\n\
         ONBUILD COPY --from=myorg/app_compile /a /a\n\
         ONBUILD FROM myorg/app_compile\n",
    );
}

#[test]
fn run_mount_from_is_rewritten() {
    check(
        "FROM scratch\n\
         RUN --mount=type=bind,from=myorg/app_compile,source=/out,target=/in cp /in/app /app\n\
         RUN --network=none --mount=type=cache,target=/c,FROM=myorg/app:1.0 true\n\
         RUN --mount=type=bind,from=0,target=/x true\n",
        "FROM scratch\n\
         RUN --mount=type=bind,from=myorg/app_compile-ab12,source=/out,target=/in cp /in/app /app\n\
         RUN --network=none --mount=type=cache,target=/c,FROM=myorg/app-ab12:1.0 true\n\
         RUN --mount=type=bind,from=0,target=/x true\n",
        &["myorg/app_compile", "myorg/app:1.0"],
    );
}

#[test]
fn arg_references_are_left_alone() {
    let src = "ARG BASE=myorg/app_compile\n\
               FROM ${BASE}\n\
               FROM $BASE AS two\n\
               FROM myorg/app:${TAG}\n";
    unchanged(src);
    assert_eq!(
        from_images(src).unwrap(),
        [
            FromLine {
                line: 2,
                image: "${BASE}".to_owned(),
                stage: None,
            },
            FromLine {
                line: 3,
                image: "$BASE".to_owned(),
                stage: Some("two".to_owned()),
            },
            FromLine {
                line: 4,
                image: "myorg/app:${TAG}".to_owned(),
                stage: None,
            },
        ]
    );
}

#[test]
fn comments_and_directives() {
    check(
        "# syntax=docker/dockerfile:1\n\
         # FROM myorg/app_compile\n\
         \x20  # FROM myorg/app:1.0\n\
         FROM myorg/app_compile\n\
         # escape=`\n\
         RUN echo \\\n\
         FROM myorg/app:1.0\n",
        "# syntax=docker/dockerfile:1\n\
         # FROM myorg/app_compile\n\
         \x20  # FROM myorg/app:1.0\n\
         FROM myorg/app_compile-ab12\n\
         # escape=`\n\
         RUN echo \\\n\
         FROM myorg/app:1.0\n",
        &["myorg/app_compile"],
    );
}

#[test]
fn line_continuations() {
    check(
        "FROM \\\n  myorg/app_compile \\\n  AS build\nRUN make\n",
        "FROM \\\n  myorg/app_compile-ab12 \\\n  AS build\nRUN make\n",
        &["myorg/app_compile"],
    );
    // Comment lines and empty lines inside a continuation are skipped.
    check(
        "FROM scratch\nCOPY \\\n# the compiled binary\n\n  --from=myorg/app_compile \\\n   # and more\n  /app /app\n",
        "FROM scratch\nCOPY \\\n# the compiled binary\n\n  --from=myorg/app_compile-ab12 \\\n   # and more\n  /app /app\n",
        &["myorg/app_compile"],
    );
    // A continued RUN swallows a FROM-looking line.
    check(
        "FROM myorg/app_compile\nRUN echo \\\nFROM myorg/app:1.0\n",
        "FROM myorg/app_compile-ab12\nRUN echo \\\nFROM myorg/app:1.0\n",
        &["myorg/app_compile"],
    );
    // An escaped backslash does not continue the line.
    check(
        "FROM scratch\nRUN echo \\\\\nFROM myorg/app:1.0\n",
        "FROM scratch\nRUN echo \\\\\nFROM myorg/app-ab12:1.0\n",
        &["myorg/app:1.0"],
    );
    // Spaces after the escape character still continue the line.
    check(
        "FROM scratch\nRUN echo \\  \t\nFROM myorg/app:1.0\n",
        "FROM scratch\nRUN echo \\  \t\nFROM myorg/app:1.0\n",
        &[],
    );
}

#[test]
fn a_name_split_by_a_continuation_keeps_the_line_count() {
    check(
        "FROM myorg/app_\\\ncompile AS build\n",
        "FROM \\\nmyorg/app_compile-ab12 AS build\n",
        &["myorg/app_compile"],
    );
    check(
        "FROM scratch\nCOPY --from=myorg/\\\n# comment\napp_\\\ncompile /a /a\n",
        "FROM scratch\nCOPY --from=\\\n# comment\n\\\nmyorg/app_compile-ab12 /a /a\n",
        &["myorg/app_compile"],
    );
}

#[test]
fn escape_directive_changes_the_continuation_character() {
    // With a backtick, a trailing backslash is an ordinary character (a
    // Windows path), so the next line is an instruction of its own.
    check(
        "# escape=`\nFROM scratch\nCOPY app C:\\app\\\nFROM myorg/app_compile `\n  AS build\n",
        "# escape=`\nFROM scratch\nCOPY app C:\\app\\\nFROM myorg/app_compile-ab12 `\n  AS build\n",
        &["myorg/app_compile"],
    );
    check(
        "#Escape = `\r\nFROM scratch\r\nRUN dir `\r\nFROM myorg/app:1.0\r\n",
        "#Escape = `\r\nFROM scratch\r\nRUN dir `\r\nFROM myorg/app:1.0\r\n",
        &[],
    );
    // Directives are only read before anything else, even a blank line.
    check(
        "\n# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app:1.0\n",
        "\n# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app:1.0\n",
        &[],
    );
    // Unknown directives end the directives too.
    check(
        "# foo=bar\n# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app:1.0\n",
        "# foo=bar\n# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app:1.0\n",
        &[],
    );
    // A byte order mark does not hide a directive.
    check(
        "\u{feff}# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app:1.0\n",
        "\u{feff}# escape=`\nFROM scratch\nRUN echo \\\nFROM myorg/app-ab12:1.0\n",
        &["myorg/app:1.0"],
    );
}

#[test]
fn heredoc_bodies_are_not_instructions() {
    check(
        "FROM scratch\n\
         RUN <<EOF\n\
         FROM myorg/app_compile\n\
         EOF\n\
         COPY <<-\"END\" /etc/conf\n\
         \tFROM myorg/app_compile\n\
         \tEND\n\
         RUN 3<<one cat <<'two' >/x\n\
         FROM myorg/app_compile\n\
         one\n\
         FROM myorg/app_compile\n\
         two\n\
         FROM myorg/app:1.0\n",
        "FROM scratch\n\
         RUN <<EOF\n\
         FROM myorg/app_compile\n\
         EOF\n\
         COPY <<-\"END\" /etc/conf\n\
         \tFROM myorg/app_compile\n\
         \tEND\n\
         RUN 3<<one cat <<'two' >/x\n\
         FROM myorg/app_compile\n\
         one\n\
         FROM myorg/app_compile\n\
         two\n\
         FROM myorg/app-ab12:1.0\n",
        &["myorg/app:1.0"],
    );
    // Not here-documents: a JSON RUN, `<<<`, other instructions.
    check(
        "FROM scratch\n\
         RUN [\"sh\", \"-c\", \"cat <<EOF\"]\n\
         RUN cat <<< hi\n\
         ENV A=<<EOF\n\
         FROM myorg/app:1.0\n",
        "FROM scratch\n\
         RUN [\"sh\", \"-c\", \"cat <<EOF\"]\n\
         RUN cat <<< hi\n\
         ENV A=<<EOF\n\
         FROM myorg/app-ab12:1.0\n",
        &["myorg/app:1.0"],
    );
}

#[test]
fn from_images_lists_every_stage() {
    let src = "# syntax=docker/dockerfile:1\n\
               ARG V=1\n\
               FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\n\
               RUN go build\n\
               \n\
               from \\\n  scratch\n\
               COPY --from=build /out /\n";
    assert_eq!(
        from_images(src).unwrap(),
        [
            FromLine {
                line: 3,
                image: "golang:1.22".to_owned(),
                stage: Some("build".to_owned()),
            },
            FromLine {
                line: 6,
                image: "scratch".to_owned(),
                stage: None,
            },
        ]
    );
}

#[test]
fn errors_name_the_line() {
    assert_eq!(
        error("FROM scratch\nRUN true\nFROM\n"),
        "Dockerfile:3: FROM requires an image"
    );
    assert_eq!(
        error("FROM --platform=linux/arm64\n"),
        "Dockerfile:1: FROM requires an image"
    );
    assert_eq!(
        error("FROM scratch\n\nFROM myorg/app_compile # base\n"),
        "Dockerfile:3: FROM takes `IMAGE [AS NAME]`, found `myorg/app_compile # base`"
    );
    assert_eq!(
        error("FROM a AS\n"),
        "Dockerfile:1: FROM takes `IMAGE [AS NAME]`, found `a AS`"
    );
    assert_eq!(
        error("FROM a AS 1st\n"),
        "Dockerfile:1: invalid build stage name `1st`: it must start with a letter and \
         contain only letters, digits, `-`, `_` and `.`"
    );
    assert_eq!(
        error("# escape=x\nFROM a\n"),
        "Dockerfile:1: invalid escape character `x`: use a backslash or a backtick"
    );
    assert_eq!(
        error("# escape=`\n# ESCAPE=\\\nFROM a\n"),
        "Dockerfile:2: the `escape` parser directive is given more than once"
    );
    assert_eq!(
        error("FROM a\nRUN <<EOF\necho\n  EOF\n"),
        "Dockerfile:2: here-document `EOF` is never terminated"
    );
    assert_eq!(
        error("# nothing\nRUN true\n"),
        "Dockerfile: no FROM instruction"
    );
    assert_eq!(error(""), "Dockerfile: no FROM instruction");
    let error = rewrite(" ".repeat(MAX_DOCKERFILE_SIZE + 1).as_str(), &images()).unwrap_err();
    assert_eq!(
        error.kind,
        DockerfileErrorKind::TooLarge {
            size: MAX_DOCKERFILE_SIZE + 1,
            limit: MAX_DOCKERFILE_SIZE,
        }
    );
    assert_eq!(
        error.in_file("app/Dockerfile.compile").to_string(),
        format!(
            "app/Dockerfile.compile: the file is {} bytes, more than the limit of {} bytes",
            MAX_DOCKERFILE_SIZE + 1,
            MAX_DOCKERFILE_SIZE
        )
    );
}

/// Dockerfile-like text: keywords, flags, step names, continuations,
/// comments, quotes, here-documents and line ends in any order.
fn dockerfile_strategy() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("FROM "),
        Just("from "),
        Just("COPY "),
        Just("RUN "),
        Just("ONBUILD "),
        Just("--from="),
        Just("--mount=type=bind,from="),
        Just("--platform=x "),
        Just("myorg/app_compile"),
        Just("myorg/app:1.0"),
        Just("compile"),
        Just(" AS "),
        Just(" as compile"),
        Just("0"),
        Just("$A"),
        Just("\\"),
        Just("`"),
        Just("\n"),
        Just("\r\n"),
        Just("# "),
        Just("# escape=`\n"),
        Just("\""),
        Just("'"),
        Just(" "),
        Just("\t"),
        Just("<<EOF"),
        Just("EOF"),
        Just("=x,"),
        Just("é"),
    ];
    proptest::collection::vec(pieces, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #[test]
    fn rewriting_never_panics_and_keeps_the_lines(src in dockerfile_strategy()) {
        match rewrite(&src, &images()) {
            Ok(rewritten) => {
                prop_assert_eq!(rewritten.text.iter().filter(|&&b| b == b'\n').count(), src.matches('\n').count());
                let froms = from_images(&src).unwrap();
                let again = from_images(&rewritten.text).unwrap();
                prop_assert_eq!(froms.len(), again.len());
                for (before, after) in froms.iter().zip(&again) {
                    prop_assert_eq!(before.line, after.line);
                    prop_assert_eq!(&before.stage, &after.stage);
                }
                // Nothing to rewrite: nothing changes.
                let same = rewrite(&src, &BTreeMap::new()).unwrap();
                prop_assert_eq!(same.text, src.as_bytes());
            }
            Err(error) => {
                prop_assert_eq!(from_images(&src).unwrap_err(), error);
            }
        }
    }
}

/// Found by the `dockerfile` fuzz target: an instruction of whitespace
/// only (NUL and tabs inside a continuation) made the splitter slice
/// backwards.
#[test]
fn fuzz_regression_whitespace_only_instruction() {
    let input = "\n\t\n\n\u{0}\t\u{0}`\n\n\n\n\n\n\\\n\t\\";
    let mut images = BTreeMap::new();
    images.insert("app".to_string(), "app-uid".to_string());
    if let Ok(out) = habitus::dockerfile::rewrite(input, &images) {
        assert_eq!(
            out.text.iter().filter(|&&b| b == b'\n').count(),
            input.matches('\n').count()
        );
    }
    let _ = habitus::dockerfile::from_images(input);
}

/// The names `ARG` and `ENV` declare, with their line, in every form
/// Docker reads; not those inside `ONBUILD`, nor computed names.
#[test]
fn arg_and_env_declarations() {
    use habitus::dockerfile::{
        declarations,
        VariableKind::{Arg, Env},
    };
    let src = "\
ARG BASE=busybox
FROM $BASE
arg A B=\"x y\" C
ENV D=1 E=\"two words\" \\
    F=3
ENV G value with spaces
# ENV H=comment
ONBUILD ENV I=1
ENV ${J}=1 'K'=2
RUN echo ENV L=1
";
    let got: Vec<(usize, _, String)> = declarations(src)
        .unwrap()
        .into_iter()
        .map(|d| (d.line, d.kind, d.name))
        .collect();
    let want = [
        (1, Arg, "BASE"),
        (3, Arg, "A"),
        (3, Arg, "B"),
        (3, Arg, "C"),
        (4, Env, "D"),
        (4, Env, "E"),
        (4, Env, "F"),
        (6, Env, "G"),
        (9, Env, "K"),
    ];
    assert_eq!(
        got,
        want.map(|(line, kind, name)| (line, kind, name.to_string()))
    );
}

/// Bytes that are not UTF-8 (Latin-1 here) pass through a rewrite as they
/// are, and a message quoting them shows U+FFFD.
#[test]
fn bytes_that_are_not_utf8_pass_through_and_are_quoted_lossily() {
    let src: &[u8] =
        b"# caf\xe9\nFROM myorg/app:1.0\nLABEL note=\"caf\xe9\"\nCOPY --from=compile /\xff /x\n";
    let rewritten = rewrite(src, &images()).unwrap();
    assert_eq!(
        rewritten.text,
        b"# caf\xe9\nFROM myorg/app-ab12:1.0\nLABEL note=\"caf\xe9\"\nCOPY --from=compile-ab12 /\xff /x\n"
    );
    assert_eq!(rewritten.references, ["myorg/app:1.0", "compile"]);
    assert_eq!(rewritten.lines, [2, 4]);
    let error = from_images(b"FROM a b caf\xe9\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "Dockerfile:1: FROM takes `IMAGE [AS NAME]`, found `a b caf\u{fffd}`"
    );
    // A byte that is not UTF-8 is no space: it belongs to the image name.
    let froms = from_images(b"FROM a\xa0b\n").unwrap();
    assert_eq!(froms[0].image, "a\u{fffd}b");
}

/// Every Dockerfile of `tests/dockerfiles/` (escapes, continuations,
/// here-documents, comments between continuation lines, a byte order
/// mark, CRLF, parser directives, Latin-1 bytes): the instructions the
/// parser finds (`NAME.instructions`, one `LINE|TEXT` each) and the bytes
/// of its rewrite with [`images`] (`NAME.rewritten`).
#[test]
fn tricky_dockerfiles_read_and_rewrite_as_written() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dockerfiles");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".Dockerfile").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let src = std::fs::read(dir.join(format!("{name}.Dockerfile"))).unwrap();
        let found: Vec<String> = instructions(&src)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .into_iter()
            .map(|i| format!("{}|{}", i.line, i.text))
            .collect();
        let want = std::fs::read_to_string(dir.join(format!("{name}.instructions"))).unwrap();
        assert_eq!(
            found,
            want.lines().collect::<Vec<_>>(),
            "{name}: instructions"
        );
        let rewritten = rewrite(&src, &images()).unwrap().text;
        let want = std::fs::read(dir.join(format!("{name}.rewritten"))).unwrap();
        assert!(
            rewritten == want,
            "{name}: rewritten\n--- got\n{}\n--- want\n{}",
            String::from_utf8_lossy(&rewritten),
            String::from_utf8_lossy(&want)
        );
        // Nothing to rewrite: every byte stays.
        assert_eq!(rewrite(&src, &BTreeMap::new()).unwrap().text, src, "{name}");
    }
}
