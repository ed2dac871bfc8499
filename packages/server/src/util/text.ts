/**
 * Text from another party (a receiver's answer, a summarizer's reply) as the database can keep it:
 * PostgreSQL's text cannot hold NUL, so it becomes U+FFFD, as invalid UTF-8 does when decoded.
 */
export const withoutNul = (text: string): string => text.replaceAll("\0", "\uFFFD");
