//! Unit and property tests of the read batch wire format.

use proptest::prelude::*;

use super::*;

fn read(volume: u32, key: u64, head: bool, max_data_bytes: u32) -> BatchRead {
    BatchRead {
        volume,
        key,
        cookie: 0x1234_5678,
        head,
        max_data_bytes,
    }
}

fn found(content_type: &str, data: &[u8]) -> BatchAnswer {
    BatchAnswer::Found {
        content_type: Bytes::copy_from_slice(content_type.as_bytes()),
        crc32: crc32fast::hash(data),
        len: data.len() as u64,
        data: Bytes::copy_from_slice(data),
    }
}

#[test]
fn request_bytes_match_the_documented_layout() {
    let body = encode_request(&[BatchRead {
        volume: 7,
        key: 0x0102_0304_0506_0708,
        cookie: 0xaabb_ccdd,
        head: true,
        max_data_bytes: 4096,
    }]);
    let mut expected = b"HLRB\x01\0\0\0\x01\0\0\0".to_vec();
    expected.extend_from_slice(&7u32.to_le_bytes());
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
    expected.extend_from_slice(&0xaabb_ccddu32.to_le_bytes());
    expected.extend_from_slice(&4096u32.to_le_bytes());
    assert_eq!(&body[..], &expected[..]);
    assert_eq!(body.len(), request_len(1));
    assert_eq!(request_len(MAX_BATCH_ENTRIES), 12 + 24 * 64);
}

#[test]
fn answer_bytes_match_the_documented_layout() {
    let body = encode_answers(&[
        found("t", b"ab"),
        BatchAnswer::NotFound,
        BatchAnswer::TooLarge { len: 9 },
        BatchAnswer::Failed("x".into()),
    ]);
    let mut expected = b"HLRA\x01\0\0\0\x04\0\0\0".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 0]);
    expected.extend_from_slice(&crc32fast::hash(b"ab").to_le_bytes());
    expected.extend_from_slice(&2u64.to_le_bytes());
    expected.extend_from_slice(&1u16.to_le_bytes());
    expected.extend_from_slice(b"tab");
    expected.extend_from_slice(&[1, 0, 0, 0]);
    expected.extend_from_slice(&[4, 0, 0, 0]);
    expected.extend_from_slice(&9u64.to_le_bytes());
    expected.extend_from_slice(&[5, 0, 0, 0, 1, 0, b'x']);
    assert_eq!(&body[..], &expected[..]);
}

#[test]
fn request_refuses_bad_counts_flags_and_framing() {
    let one = encode_request(&[read(1, 1, false, 10)]);
    assert_eq!(
        decode_request(&one).expect("valid"),
        [read(1, 1, false, 10)]
    );
    assert_eq!(
        decode_request(&encode_request(&[])),
        Err(BatchError::BadCount(0))
    );
    let many = vec![read(1, 1, false, 10); MAX_BATCH_ENTRIES + 1];
    assert_eq!(
        decode_request(&encode_request(&many)),
        Err(BatchError::BadCount(65))
    );
    let mut b = one.to_vec();
    b[0] = b'X';
    assert!(matches!(
        decode_request(&b),
        Err(BatchError::BadMagic { .. })
    ));
    let mut b = one.to_vec();
    b[4] = 2;
    assert_eq!(decode_request(&b), Err(BatchError::UnsupportedVersion(2)));
    let mut b = one.to_vec();
    b[6] = 1;
    assert_eq!(decode_request(&b), Err(BatchError::Reserved { at: 6 }));
    let mut b = one.to_vec();
    b[12 + 4] = 2;
    assert_eq!(
        decode_request(&b),
        Err(BatchError::UnknownFlags { entry: 0, flags: 2 })
    );
    let mut b = one.to_vec();
    b.push(0);
    assert_eq!(decode_request(&b), Err(BatchError::TrailingBytes(1)));
    assert!(matches!(
        decode_request(&one[..one.len() - 1]),
        Err(BatchError::Truncated { .. })
    ));
    // A count far above the body is refused before anything is allocated.
    let mut b = one.to_vec();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(decode_request(&b), Err(BatchError::BadCount(u32::MAX)));
}

#[test]
fn answers_refuse_count_mismatch_trailing_bytes_magic_and_version() {
    let requests = [read(1, 1, false, 10), read(1, 2, false, 10)];
    let body = encode_answers(&[found("a", b"xy"), BatchAnswer::NotFound]);
    assert_eq!(
        decode_answers(body.clone(), &requests).expect("valid"),
        [found("a", b"xy"), BatchAnswer::NotFound]
    );
    assert_eq!(
        decode_answers(body.clone(), &requests[..1]),
        Err(BatchError::CountMismatch {
            expected: 1,
            found: 2
        })
    );
    let mut b = body.to_vec();
    b.extend_from_slice(&[1, 0, 0, 0]);
    assert_eq!(
        decode_answers(Bytes::from(b), &requests),
        Err(BatchError::TrailingBytes(4))
    );
    let mut b = body.to_vec();
    b[3] = b'B';
    assert!(matches!(
        decode_answers(Bytes::from(b), &requests),
        Err(BatchError::BadMagic { .. })
    ));
    let mut b = body.to_vec();
    b[4] = 0;
    assert_eq!(
        decode_answers(Bytes::from(b), &requests),
        Err(BatchError::UnsupportedVersion(0))
    );
    // A request body is not an answer.
    assert!(matches!(
        decode_answers(encode_request(&requests), &requests),
        Err(BatchError::BadMagic { .. })
    ));
}

#[test]
fn answers_refuse_data_above_the_limit_and_data_for_head_entries() {
    let body = encode_answers(&[found("a", b"12345")]);
    assert_eq!(
        decode_answers(body.clone(), &[read(1, 1, false, 4)]),
        Err(BatchError::DataTooLong {
            entry: 0,
            len: 5,
            max: 4
        })
    );
    // A head entry carries no data: the data bytes would trail.
    assert_eq!(
        decode_answers(body, &[read(1, 1, true, 10)]),
        Err(BatchError::TrailingBytes(5))
    );
    let head = BatchAnswer::Found {
        content_type: Bytes::from_static(b"a"),
        crc32: 3,
        len: 1 << 40,
        data: Bytes::new(),
    };
    let body = encode_answers(std::slice::from_ref(&head));
    assert_eq!(
        decode_answers(body, &[read(1, 1, true, 10)]).expect("head"),
        [head]
    );
}

#[test]
fn a_flipped_data_byte_is_corrupt_for_that_entry_only() {
    let requests = [read(1, 1, false, 100), read(2, 2, false, 100)];
    let answers = [found("text/plain", b"hello"), found("b", b"world")];
    let mut b = encode_answers(&answers).to_vec();
    let first_data = 12 + 4 + 14 + "text/plain".len();
    assert_eq!(&b[first_data..first_data + 5], b"hello");
    b[first_data] ^= 0x20;
    let decoded = decode_answers(Bytes::from(b), &requests).expect("decodes");
    assert!(matches!(&decoded[0], BatchAnswer::Corrupt(m) if m.contains("crc32")));
    assert_eq!(decoded[1], answers[1]);
}

#[test]
fn messages_are_cut_to_one_kib_at_a_character_boundary() {
    let long = "é".repeat(MESSAGE_LEN_MAX);
    let body = encode_answers(&[BatchAnswer::Failed(long.clone())]);
    let decoded = decode_answers(body, &[read(1, 1, false, 0)]).expect("decodes");
    let BatchAnswer::Failed(m) = &decoded[0] else {
        panic!("expected Failed, got {decoded:?}");
    };
    assert_eq!(m.len(), MESSAGE_LEN_MAX);
    assert!(long.starts_with(m.as_str()));
    let mut b = encode_answers(&[BatchAnswer::Corrupt("ab".into())]).to_vec();
    b[12 + 4 + 2] = 0xff;
    assert_eq!(
        decode_answers(Bytes::from(b), &[read(1, 1, false, 0)]),
        Err(BatchError::BadMessage { entry: 0 })
    );
}

fn arb_read() -> impl Strategy<Value = BatchRead> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        0u32..64,
    )
        .prop_map(|(volume, key, cookie, head, max_data_bytes)| BatchRead {
            volume,
            key,
            cookie,
            head,
            max_data_bytes,
        })
}

/// A request and an answer that fits it.
fn arb_batch() -> impl Strategy<Value = (Vec<BatchRead>, Vec<BatchAnswer>)> {
    prop::collection::vec(arb_read(), 1..=MAX_BATCH_ENTRIES).prop_flat_map(|requests| {
        let answers: Vec<_> = requests.iter().map(|r| arb_answer(*r)).collect();
        (Just(requests), answers)
    })
}

fn arb_answer(request: BatchRead) -> impl Strategy<Value = BatchAnswer> {
    let data = prop::collection::vec(any::<u8>(), 0..=request.max_data_bytes as usize);
    let found = (".{0,20}", data, any::<u64>()).prop_map(move |(ct, data, head_len)| {
        let (len, data) = if request.head {
            (head_len, Bytes::new())
        } else {
            (data.len() as u64, Bytes::from(data))
        };
        BatchAnswer::Found {
            content_type: Bytes::from(ct),
            crc32: crc32fast::hash(&data),
            len,
            data,
        }
    });
    prop_oneof![
        found,
        Just(BatchAnswer::NotFound),
        ".{0,40}".prop_map(BatchAnswer::UnknownVolume),
        ".{0,40}".prop_map(BatchAnswer::Corrupt),
        any::<u64>().prop_map(|len| BatchAnswer::TooLarge { len }),
        ".{0,40}".prop_map(BatchAnswer::Failed),
    ]
}

/// The one-buffer encoder the store node used before [`encode_answer_chunks`], kept as the
/// reference for the wire format.
fn reference_encode_answers(answers: &[BatchAnswer]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&ANSWER_MAGIC);
    buf.extend_from_slice(&[BATCH_FORMAT_VERSION, 0, 0, 0]);
    buf.extend_from_slice(&(answers.len() as u32).to_le_bytes());
    let message = |buf: &mut Vec<u8>, status: u8, m: &str| {
        let m = cut_message(m);
        buf.extend_from_slice(&[status, 0, 0, 0]);
        buf.extend_from_slice(&(m.len() as u16).to_le_bytes());
        buf.extend_from_slice(m.as_bytes());
    };
    for answer in answers {
        match answer {
            BatchAnswer::Found {
                content_type,
                crc32,
                len,
                data,
            } => {
                buf.extend_from_slice(&[STATUS_FOUND, 0, 0, 0]);
                buf.extend_from_slice(&crc32.to_le_bytes());
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&(content_type.len() as u16).to_le_bytes());
                buf.extend_from_slice(content_type);
                buf.extend_from_slice(data);
            }
            BatchAnswer::NotFound => buf.extend_from_slice(&[STATUS_NOT_FOUND, 0, 0, 0]),
            BatchAnswer::UnknownVolume(m) => message(&mut buf, STATUS_UNKNOWN_VOLUME, m),
            BatchAnswer::Corrupt(m) => message(&mut buf, STATUS_CORRUPT, m),
            BatchAnswer::TooLarge { len } => {
                buf.extend_from_slice(&[STATUS_TOO_LARGE, 0, 0, 0]);
                buf.extend_from_slice(&len.to_le_bytes());
            }
            BatchAnswer::Failed(m) => message(&mut buf, STATUS_FAILED, m),
        }
    }
    buf
}

/// Answers of a random batch, some of them messages long enough to be cut.
fn arb_answers_to_encode() -> impl Strategy<Value = Vec<BatchAnswer>> {
    let long = ".{300,1100}";
    let answer = prop_oneof![
        4 => arb_read().prop_flat_map(arb_answer),
        1 => long.prop_map(BatchAnswer::Failed),
        1 => long.prop_map(BatchAnswer::Corrupt),
    ];
    prop::collection::vec(answer, 0..=MAX_BATCH_ENTRIES)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn answer_chunks_are_the_reference_encoding_with_data_uncopied(
        answers in arb_answers_to_encode(),
    ) {
        let chunks = encode_answer_chunks(&answers);
        prop_assert!(chunks.iter().all(|c| !c.is_empty()), "no empty chunk");
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let reference = reference_encode_answers(&answers);
        prop_assert_eq!(&joined, &reference);
        prop_assert_eq!(&encode_answers(&answers)[..], &reference[..]);
        // Every found entry's data is a chunk of its own, the same memory.
        let data: Vec<&Bytes> = answers
            .iter()
            .filter_map(|a| match a {
                BatchAnswer::Found { data, .. } if !data.is_empty() => Some(data),
                _ => None,
            })
            .collect();
        let mut in_chunks = chunks.iter().skip(1).step_by(2);
        for d in data {
            let c = in_chunks.next().expect("a chunk for each found entry's data");
            prop_assert_eq!(c.as_ptr(), d.as_ptr());
            prop_assert_eq!(c.len(), d.len());
        }
    }

    #[test]
    fn requests_round_trip(requests in prop::collection::vec(arb_read(), 1..=MAX_BATCH_ENTRIES)) {
        let body = encode_request(&requests);
        prop_assert_eq!(body.len(), request_len(requests.len()));
        prop_assert_eq!(decode_request(&body), Ok(requests));
    }

    #[test]
    fn answers_round_trip((requests, answers) in arb_batch()) {
        let body = encode_answers(&answers);
        prop_assert_eq!(decode_answers(body, &requests), Ok(answers));
    }

    #[test]
    fn random_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..400),
        requests in prop::collection::vec(arb_read(), 0..4),
    ) {
        let _ = decode_request(&body);
        let _ = decode_answers(Bytes::from(body), &requests);
    }

    #[test]
    fn random_bodies_with_valid_headers_never_panic(
        count in 0u32..4,
        tail in prop::collection::vec(any::<u8>(), 0..200),
        requests in prop::collection::vec(arb_read(), 0..4),
    ) {
        for magic in [REQUEST_MAGIC, ANSWER_MAGIC] {
            let mut body = magic.to_vec();
            body.extend_from_slice(&[BATCH_FORMAT_VERSION, 0, 0, 0]);
            body.extend_from_slice(&count.to_le_bytes());
            body.extend_from_slice(&tail);
            let _ = decode_request(&body);
            let _ = decode_answers(Bytes::from(body), &requests);
        }
    }

    #[test]
    fn truncated_and_mutated_bodies_never_panic(
        (requests, answers) in arb_batch(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
    ) {
        let body = encode_answers(&answers);
        let cut = cut.index(body.len());
        prop_assert!(decode_answers(body.slice(..cut), &requests).is_err());
        let mut mutated = body.to_vec();
        for (at, x) in &flips {
            mutated[at.index(body.len())] ^= x;
        }
        let _ = decode_answers(Bytes::from(mutated), &requests);

        let request = encode_request(&requests);
        let cut = request.len() * 3 / 4;
        prop_assert!(decode_request(&request[..cut]).is_err());
        let mut mutated = request.to_vec();
        for (at, x) in &flips {
            mutated[at.index(request.len())] ^= x;
        }
        let _ = decode_request(&mutated);
    }
}
