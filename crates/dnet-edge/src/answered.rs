//! Per-sample exits across units (docs/architecture.md, "Per-sample exits"):
//! when this unit answered some samples of a request and handed the others
//! on, the next unit's answer for those is merged into this unit's rows, so
//! the caller gets every sample's answer in its order.

use dnet_codec::Answers;
use dnet_proto::{Bytes, ComputationResponse, Data, StatusCode};

use crate::error::Error;

/// Merges the next unit's `answer` into `answered` (this unit's rows, empty
/// when it answered no sample). A SUCCESS becomes the whole request's
/// result; a NOT_SUCCESS (the chain ends below exit 16) keeps the rows still
/// pending in its `answered`; an ERROR stays the request's answer, with the
/// rows answered so far in its `answered` (exit layer 0: the samples that
/// failed) and its message saying so.
///
/// # Errors
/// The rows do not fit together: a unit on the way broke the contract.
pub fn merge(answered: Bytes, mut answer: ComputationResponse) -> Result<ComputationResponse, Error> {
    if answered.is_empty() {
        return Ok(answer);
    }
    let bad = |e: String| Error::BadReply(format!("cannot merge the next unit's answer with this unit's: {e}"));
    let ours = Answers::parse(&answered, 0).map_err(bad)?;
    match (StatusCode::try_from(answer.status), &answer.data) {
        (Ok(StatusCode::Success), Some(Data::Result(result))) => {
            let rest = Answers::parse(result, answer.exit_layer).map_err(bad)?;
            let merged = ours.merge(&rest).map_err(bad)?;
            answer.exit_layer = merged.deepest_exit();
            answer.confidence = merged.min_confidence();
            answer.data = Some(Data::Result(merged.encode().map_err(bad)?.into()));
        }
        (Ok(StatusCode::NotSuccess), _) if answer.answered.is_empty() => answer.answered = answered,
        (Ok(StatusCode::NotSuccess), _) => {
            let rest = Answers::parse(&answer.answered, 0).map_err(bad)?;
            answer.answered = ours.merge(&rest).map_err(bad)?.encode().map_err(bad)?.into();
        }
        (Ok(StatusCode::Error), _) => {
            let (all, failed) = (ours.category.len(), ours.pending());
            if let Some(Data::ErrorMessage(message)) = &mut answer.data {
                *message = format!(
                    "{} of {all} samples answered (in `answered`); the {failed} handed on failed: {message}",
                    all - failed
                );
            }
            answer.answered = answered;
        }
        _ => {}
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(exits: &[i64]) -> Answers {
        Answers {
            category: exits.iter().map(|_| 3).collect(),
            probs: exits.iter().flat_map(|_| [0.1_f32; 10]).collect(),
            exit_layer: exits.to_vec(),
        }
    }

    #[test]
    fn a_downstream_error_keeps_the_rows_answered_here() {
        let ours: Bytes = rows(&[8, 0, 8]).encode().expect("encodes").into();
        let error = ComputationResponse {
            status: StatusCode::Error as i32,
            data: Some(Data::ErrorMessage("start_layer 8 is out of range".into())),
            ..ComputationResponse::default()
        };
        let merged = merge(ours.clone(), error).expect("merges");
        assert_eq!(merged.status, StatusCode::Error as i32);
        assert_eq!(merged.answered, ours, "which samples were answered, and which failed");
        let Some(Data::ErrorMessage(message)) = merged.data else {
            panic!("an error message")
        };
        assert!(message.starts_with("2 of 3 samples answered"), "{message}");
        assert!(message.ends_with("start_layer 8 is out of range"), "{message}");
    }
}
